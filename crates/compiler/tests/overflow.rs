//! A decrypted output beyond the room the plan left is refused, image by image: the others
//! still decode, and nothing out of range comes back as a number.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use blindfold_compiler::{Error, Packing, Plan};
use blindfold_nn::registry;

fn plan(packing: Packing) -> Plan {
    let model = registry::load("mnist-cryptonets").unwrap();
    Plan::compile("mnist-cryptonets", &model.network, packing).unwrap()
}

#[test]
fn one_image_out_of_range_is_flagged_and_the_others_decode() {
    // Throughput: output k of image i is slot i of output vector k; image 1 overflows.
    let throughput = plan(Packing::Throughput);
    let outputs: Vec<Vec<f64>> = (0..10).map(|k| vec![0.5, if k == 3 { 1e12 } else { 0.5 }, -0.25]).collect();
    let each = throughput.unpack_each(&outputs, 3).unwrap();
    assert!(each[0].is_ok() && each[2].is_ok());
    assert!(matches!(each[1], Err(Error::Overflow { value, .. }) if value == 1e12), "{:?}", each[1]);
    assert!(matches!(throughput.unpack(&outputs, 3), Err(Error::Overflow { .. })));
    assert!(throughput.unpack_each(&outputs, 3).unwrap()[0].as_ref().unwrap().iter().all(|v| v.is_finite()));

    // Latency: each image has its own ciphertexts; a NaN is out of range too.
    let latency = plan(Packing::Latency);
    let per = match &latency {
        Plan::Latency(plan) => plan.output_ciphertexts(),
        Plan::Throughput(_) => unreachable!(),
    };
    let slots = match &latency {
        Plan::Latency(plan) => plan.params().slots(),
        Plan::Throughput(_) => unreachable!(),
    };
    let mut outputs = vec![vec![0.0; slots]; 2 * per];
    for ct in &mut outputs[per..] {
        ct.fill(f64::NAN);
    }
    let each = latency.unpack_each(&outputs, 2).unwrap();
    assert_eq!(each[0].as_ref().unwrap().len(), 10);
    assert!(matches!(each[1], Err(Error::Overflow { .. })));
    // Too few ciphertexts is the batch's fault, not an image's.
    assert!(matches!(latency.unpack_each(&outputs[..per], 2), Err(Error::Input(_))));
}
