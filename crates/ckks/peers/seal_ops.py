#!/usr/bin/env python3
"""Microsoft SEAL CKKS op timings for blindfold-ckks's opbench, one ring per run, one thread.

SEAL comes from TenSEAL 0.3.18's bundled `tenseal.sealapi` (`bash ../shared/peers/setup.sh`
makes a virtual environment with it and prints its python). opbench runs this script between
its own rounds (`opbench --peer PYTHON`); by hand:

    python crates/ckks/peers/seal_ops.py --log-n 15 --reps 7

Shapes (the usual SEAL benchmark shapes, the same as opbench's "seal" rows; Delta = 2^40):
    log_n 13: [60, 40, 40] + special 60          (200 bits, 128-bit)
    log_n 14: [60, 40 x 7] + special 60          (400 bits, 128-bit)
    log_n 15: [60, 40 x 16] + special 60         (760 bits, 128-bit)
    log_n 16: [60, 40 x 35] + special 60         (1,520 bits) -- SEAL's 128-bit table stops at
              2^15, so this ring runs with sec_level NONE; 1,520 bits is under the 1,747-bit
              HomomorphicEncryption.org bound for N = 2^16, which blindfold-ckks checks.

Prints one JSON object: ring, shape, security level, repetitions and, under "ops", the median
wall time in microseconds of each op over --reps runs after one warm-up run. SEAL has no
hoisted-rotation API: "rotate_8" is 8 separate rotate_vector calls (steps 1..8), each with its
own decomposition; opbench sets it against its rotate_hoisted_8 (8 rotations sharing one).
Keys are generated in stages (relinearization key, then the Galois keys) and freed after use,
because at log_n 16 each key is about 1.4 GB (SEAL's memory pool keeps freed blocks, so the
process grows to about (Galois keys + 2) x 1.4 GB). `--rotation-keys K` (default 8) makes keys
for steps 1..K only and cycles the 8 rotations through them (steps 1..K, 1..K, ...): the same
work per rotation in less memory, for a shared machine. Before each key the script checks
MemAvailable and exits (status 3) rather than push the machine into the OOM killer.
"""
import argparse
import json
import statistics
import sys
import time

import numpy as np
import tenseal
import tenseal.sealapi as sa

SHAPES = {
    13: [60, 40, 40, 60],
    14: [60] + [40] * 7 + [60],
    15: [60] + [40] * 16 + [60],
    16: [60] + [40] * 35 + [60],
}
LOG_SCALE = 40
ROTATIONS = 8


def memory_available():
    """MemAvailable in bytes, or None off Linux."""
    try:
        with open("/proc/meminfo") as meminfo:
            for line in meminfo:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return None


def ensure_memory(what, needed):
    """Exits (status 3) when fewer than `needed` bytes plus 1 GiB are available."""
    available = memory_available()
    if available is not None and available < needed + (1 << 30):
        sys.stderr.write(
            f"seal_ops.py: not enough memory for {what}: needs {needed / 1e9:.1f} GB, "
            f"{available / 1e9:.1f} GB available\n"
        )
        sys.exit(3)


def measure(fn, reps):
    """Median wall time (us) over `reps` runs after one warm-up; also the CPU time it used."""
    fn()
    walls, cpus = [], []
    for _ in range(reps):
        cpu, wall = time.process_time(), time.perf_counter()
        fn()
        walls.append(time.perf_counter() - wall)
        cpus.append(time.process_time() - cpu)
    return statistics.median(walls) * 1e6, sum(cpus), sum(walls)


def bench(log_n, reps, rotation_keys):
    n = 1 << log_n
    bits = SHAPES[log_n]
    # One key-switching key: a ciphertext (2 polynomials over every prime) per ciphertext prime.
    key_bytes = (len(bits) - 1) * 2 * len(bits) * n * 8
    secure = log_n <= 15
    params = sa.EncryptionParameters(sa.SCHEME_TYPE.CKKS)
    params.set_poly_modulus_degree(n)
    params.set_coeff_modulus(sa.CoeffModulus.Create(n, bits))
    context = sa.SEALContext(params, True, sa.SEC_LEVEL_TYPE.TC128 if secure else sa.SEC_LEVEL_TYPE.NONE)
    if context.parameters_error_message() != "valid":
        raise SystemExit(f"SEAL refused the parameters: {context.parameters_error_message()}")
    keygen = sa.KeyGenerator(context)
    secret = keygen.secret_key()
    public = sa.PublicKey()
    keygen.create_public_key(public)
    encoder = sa.CKKSEncoder(context)
    encryptor = sa.Encryptor(context, public, secret)
    decryptor = sa.Decryptor(context, secret)
    evaluator = sa.Evaluator(context)
    values = np.random.default_rng(0).uniform(-0.5, 0.5, encoder.slot_count())
    value_list = values.tolist()
    scale = 2.0**LOG_SCALE
    plain = sa.Plaintext()
    encoder.encode(value_list, scale, plain)
    a, b = sa.Ciphertext(context), sa.Ciphertext(context)
    encryptor.encrypt_symmetric(plain, a)
    encryptor.encrypt_symmetric(plain, b)
    out, scratch = sa.Ciphertext(), sa.Plaintext()

    ops, cpu_total, wall_total = {}, 0.0, 0.0

    def run(name, fn):
        nonlocal cpu_total, wall_total
        median, cpu, wall = measure(fn, reps)
        ops[name] = round(median, 1)
        cpu_total += cpu
        wall_total += wall

    run("encode", lambda: encoder.encode(value_list, scale, scratch))
    run("encrypt_pk", lambda: encryptor.encrypt(plain, out))
    run("encrypt_sk", lambda: encryptor.encrypt_symmetric(plain, out))
    run("decrypt", lambda: decryptor.decrypt(a, scratch))
    run("add", lambda: evaluator.add(a, b, out))
    run("mul_plain", lambda: evaluator.multiply_plain(a, plain, out))
    run("mul", lambda: evaluator.multiply(a, b, out))

    ensure_memory("the relinearization key", key_bytes)
    relin_keys = sa.RelinKeys()
    keygen.create_relin_keys(relin_keys)
    product = sa.Ciphertext()
    evaluator.multiply(a, b, product)
    relinearized = sa.Ciphertext()
    evaluator.relinearize(product, relin_keys, relinearized)

    def mul_relin():
        evaluator.multiply(a, b, out)
        evaluator.relinearize_inplace(out, relin_keys)

    run("relin", lambda: evaluator.relinearize(product, relin_keys, out))
    run("mul_relin", mul_relin)
    run("rescale", lambda: evaluator.rescale_to_next(relinearized, out))
    del relin_keys, product

    # SEAL rotates left by `step` with the Galois element 3^step mod 2N.
    ensure_memory(f"{rotation_keys} Galois keys", rotation_keys * key_bytes)
    galois_keys = sa.GaloisKeys()
    keygen.create_galois_keys([pow(3, step, 2 * n) for step in range(1, rotation_keys + 1)], galois_keys)
    steps = [i % rotation_keys + 1 for i in range(ROTATIONS)]
    rotated = [sa.Ciphertext() for _ in range(ROTATIONS)]

    def rotate_8():
        for i, step in enumerate(steps):
            evaluator.rotate_vector(a, step, galois_keys, rotated[i])

    run("rotate", lambda: evaluator.rotate_vector(a, 1, galois_keys, out))
    run("rotate_8", rotate_8)
    # The rotations are real: the last one decrypts to the values moved left by its step.
    decryptor.decrypt(rotated[-1], scratch)
    error = float(np.abs(np.array(encoder.decode_double(scratch)) - np.roll(values, -steps[-1])).max())
    if not error < 1e-3:
        raise SystemExit(f"SEAL rotation check failed: error {error}")
    del galois_keys, rotated

    return {
        "peer": "seal",
        "library": f"Microsoft SEAL (tenseal {tenseal.__version__} sealapi)",
        "log_n": log_n,
        "coeff_bits": bits[:-1],
        "special_bits": bits[-1:],
        "log_qp": sum(bits),
        "log_scale": LOG_SCALE,
        "sec_level": "tc128" if secure else "none",
        "note": None
        if secure
        else "SEAL's 128-bit table stops at N = 2^15: run with sec_level NONE at the same shape "
        "(1,520 bits, under the 1,747-bit HomomorphicEncryption.org bound for N = 2^16)",
        "threads": 1,
        "cpu_over_wall": round(cpu_total / wall_total, 3),
        "reps": reps,
        "rotation_keys": rotation_keys,
        "rotate_8": f"8 separate rotate_vector calls, steps {steps} (SEAL has no hoisted rotations)",
        "ops": ops,
    }


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--log-n", type=int, required=True, choices=sorted(SHAPES))
    parser.add_argument("--reps", type=int, default=None, help="runs per op (default 31/15/7/3 for 13/14/15/16)")
    parser.add_argument(
        "--rotation-keys", type=int, default=ROTATIONS, help="distinct Galois keys (1..8) the 8 rotations cycle through"
    )
    args = parser.parse_args()
    if not 1 <= args.rotation_keys <= ROTATIONS:
        parser.error("--rotation-keys must be between 1 and 8")
    reps = args.reps or {13: 31, 14: 15, 15: 7, 16: 3}[args.log_n]
    if reps < 1:
        parser.error("--reps must be at least 1")
    json.dump(bench(args.log_n, reps, args.rotation_keys), sys.stdout)
    print()


if __name__ == "__main__":
    main()
