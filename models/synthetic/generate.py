#!/usr/bin/env python3
"""Two synthetic benchmark networks: shapes for timing, with random weights, not trained models.

    models/synthetic/unet-shape/{model.onnx,manifest.json}    U-Net on DermaMNIST 64x64 RGB -> 1x64x64
    models/synthetic/resnet-shape/{model.onnx,manifest.json}  residual network on DermaMNIST 28x28 RGB -> 7

The weights are random but calibrated for a bounded range, which is what an encrypted benchmark
needs (under CKKS every value must stay inside a range planned in advance, and a few huge values
would cost everyone precision): after each Conv, ConvTranspose or Gemm is built, the network so far
is run on the calibration images (the first 512 training images) and that layer's weights and bias
are rescaled per output channel so its output (the pre-activation) has mean 0 and a largest |value|
of 4 over all those images and positions, as a folded batch norm would but with a max-abs rather
than a standard-deviation scale. Activations are the quadratic a*t*t + b*t written with Mul/Add, a
drawn per layer in [0.115, 0.125] and b in [0.9, 0.96], so that on [-4, 4] it stays within
[-2, 6]; and, in the residual network, Blindfold's own operator ai.blindfold::Polynomial
(Chebyshev basis, degree 7, approximating SiLU x*sigmoid(x) on the interval its input spans over
the calibration images, widened by 20 % of its width, half at each end). The first 512 test images
then check the plan, and the manifests record the result (metrics): each tensor's largest |value|
over its largest on the calibration images, against a margin of 1.5x (the images beyond it and the
nodes where, listed), and the fraction of each polynomial's inputs inside its interval.

Everything is computed by the numpy reference forward pass below (float64 on the float32 weights)
and checked against onnxruntime: the U-Net as it is, the residual network with each Polynomial node
rewritten as standard Mul/Add ops (onnxruntime cannot run the custom operator).

A development tool: nothing in Blindfold's build or tests runs it. No torch needed; deterministic
(fixed seed, one thread), so a rerun with the same numpy/onnx versions rewrites identical files:

    python3 -m venv /tmp/onnx-venv
    /tmp/onnx-venv/bin/pip install numpy onnx onnxruntime
    /tmp/onnx-venv/bin/python models/synthetic/generate.py [--data ../shared/data]

Multiplicative depth, as recorded in the manifests: every Conv, ConvTranspose and Gemm costs 1
level, every quadratic activation 1, AveragePool, GlobalAveragePool, Flatten, Concat and Add 0,
a node joining several tensors starts from the deepest; a Chebyshev polynomial of degree d costs
ceil(log2(d + 1)) levels, plus 1 when its input is neither directly the output of a Conv or Gemm
nor a residual Add (whose branches take the map of the interval onto [-1, 1]).
"""

import os

for _v in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ.setdefault(_v, "1")

import argparse  # noqa: E402
import copy  # noqa: E402
import hashlib  # noqa: E402
import json  # noqa: E402
import math  # noqa: E402

import numpy as np  # noqa: E402
import onnx  # noqa: E402
import onnxruntime as ort  # noqa: E402
from numpy.polynomial import chebyshev as C  # noqa: E402
from onnx import TensorProto, helper, numpy_helper  # noqa: E402

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.abspath(os.path.join(HERE, "..", ".."))
OPSET = 17
DOMAIN = "ai.blindfold"
F32 = np.float32
SEED = 2024
CALIBRATION_IMAGES = 512  # first training images: layer scales and polynomial intervals
TEST_IMAGES = 512  # first test images: the range checks and the recorded output statistics
CALIBRATION_MAX = 4.0  # largest |pre-activation| over the calibration images, per output channel
TEST_MARGIN = 1.5  # on the test images, no tensor may exceed this times its calibration largest |value|
INTERVAL_WIDEN = 0.20
POLY_DEGREE = 7
RESNET_BLOCKS = 3
OUT = HERE
RESIZE = "stretch to the input height and width (aspect ratio not kept), bicubic (Catmull-Rom) filter"

DERMA_CLASSES = [
    "actinic keratoses and intraepithelial carcinoma",
    "basal cell carcinoma",
    "benign keratosis-like lesions",
    "dermatofibroma",
    "melanoma",
    "melanocytic nevi",
    "vascular lesions",
]
MELANOMA = 4


# ----------------------------------------------------------------------------- numpy reference (NCHW, float64)



def output_bound(outputs):
    """The manifest's output_bound: four times the largest |output| seen, up to a power of two
    (the encrypted plan leaves that much room for the outputs in q_0; less room, more precision)."""
    return float(2 ** math.ceil(math.log2(4 * float(np.abs(outputs).max()))))

def np_conv(x, w, b, pad):
    """ONNX Conv, stride 1, group 1, pads [pad]*4: w (O, I, k, k)."""
    x = np.pad(x, ((0, 0), (0, 0), (pad, pad), (pad, pad)))
    w = np.asarray(w, np.float64)
    n, c, h, wd = x.shape
    co, ci, kh, kw = w.shape
    ho, wo = h - kh + 1, wd - kw + 1
    out = np.zeros((n, co, ho, wo))
    for i in range(kh):
        for j in range(kw):
            out += np.einsum("nchw,oc->nohw", x[:, :, i : i + ho, j : j + wo], w[:, :, i, j], optimize=True)
    return out + np.asarray(b, np.float64).reshape(1, -1, 1, 1)


def np_conv_transpose(x, w, b, k):
    """ONNX ConvTranspose with kernel k = stride k, no pads: w (I, O, k, k)."""
    w = np.asarray(w, np.float64)
    n, c, h, wd = x.shape
    out = np.zeros((n, w.shape[1], h * k, wd * k))
    for i in range(k):
        for j in range(k):
            out[:, :, i::k, j::k] = np.einsum("nchw,co->nohw", x, w[:, :, i, j], optimize=True)
    return out + np.asarray(b, np.float64).reshape(1, -1, 1, 1)


def np_avgpool(x, k):
    n, c, h, w = x.shape
    return x.reshape(n, c, h // k, k, w // k, k).mean(axis=(3, 5))


def np_gemm(x, w, b):
    """Gemm with transB = 1: w (out, in)."""
    return x @ np.asarray(w, np.float64).T + np.asarray(b, np.float64)


def np_chebyshev(x, coefficients, interval):
    lo, hi = interval
    return C.chebval((2 * x - lo - hi) / (hi - lo), np.asarray(coefficients, np.float64))


def silu(x):
    return x / (1 + np.exp(-x))


# ----------------------------------------------------------------------------- builder


class Net:
    """Builds the ONNX graph and, alongside, runs the numpy reference on each batch of images.

    `batches`: name -> normalised images (N, C, H, W); "cal" calibrates the layers and the polynomial
    intervals, "test" checks them."""

    def __init__(self, rng, batches):
        self.rng = rng
        self.nodes = []
        self.inits = []
        self.count = 0
        self.vals = {"input": {k: np.asarray(v, np.float64) for k, v in batches.items()}}
        self.depth = {"input": 0}
        self.kind = {"input": "input"}
        self.activations = []
        self.parameters = 0
        self.polynomials = []
        self.layers = []
        self.peak = {}  # node -> batch -> largest |value| of each image
        self.custom = False

    def fresh(self, op):
        self.count += 1
        return f"{op.lower()}{self.count}"

    def const(self, name, value, dtype=F32):
        self.inits.append(numpy_helper.from_array(np.asarray(value, dtype), name))
        return name

    def emit(self, op, inputs, vals, depth, kind=None, domain=None, keep=True, **attrs):
        """Adds a node; `keep` False drops its values once their largest |value| is recorded (memory)."""
        out = self.fresh(op)
        kw = {"domain": domain} if domain else {}
        self.nodes.append(helper.make_node(op, inputs, [out], name=out, **kw, **attrs))
        self.peak[out] = {k: np.abs(v).reshape(v.shape[0], -1).max(axis=1) for k, v in vals.items()}
        self.vals[out] = vals if keep else None
        self.depth[out] = depth
        self.kind[out] = kind or op
        return out

    def apply(self, t, f):
        return {k: f(v) for k, v in self.vals[t].items()}

    def calibrate(self, t, w, b, f, out_axis):
        """Rescales w and b per output channel so f(input, w, b) has mean 0 and largest |value|
        CALIBRATION_MAX over the calibration batch (all images and positions); then, while float32
        rounding leaves a channel above CALIBRATION_MAX, scales that channel down by the excess."""
        x = self.vals[t]["cal"]
        y = f(x, w, b)
        axes = (0, 2, 3) if y.ndim == 4 else (0,)
        shape = [1] * w.ndim
        shape[out_axis] = -1

        def scaled(w, b, scale):
            return (w * scale.reshape(shape)).astype(F32), (b * scale).astype(F32)

        b = b - y.mean(axis=axes)
        top = np.abs(f(x, w, b)).max(axis=axes)
        w, b = scaled(w, b, np.where(top > 1e-8, CALIBRATION_MAX / np.maximum(top, 1e-8), 1.0))
        for _ in range(8):
            y = f(x, w, b)
            top = np.abs(y).max(axis=axes)
            over = top > CALIBRATION_MAX
            if not over.any():
                break
            w, b = scaled(w, b, np.where(over, CALIBRATION_MAX / top * (1 - 2.0**-22), 1.0))
        else:
            raise AssertionError(f"calibration of the layer after {t} did not settle under {CALIBRATION_MAX}")
        return w, b, y

    def linear(self, op, t, w, b, f, out_axis, **attrs):
        w, b, y = self.calibrate(t, w, b, f, out_axis)
        self.parameters += w.size + b.size
        wn, bn = self.const(self.fresh("w"), w), self.const(self.fresh("b"), b)
        vals = {k: (y if k == "cal" else f(v, w, b)) for k, v in self.vals[t].items()}
        out = self.emit(op, [t, wn, bn], vals, self.depth[t] + 1, **attrs)
        layer = {"node": out, "op": op, "channels": int(y.shape[1])}
        for k, v in vals.items():
            a = np.abs(v)
            layer[k] = {"max_abs": float(a.max()), "p99.9_abs": float(np.percentile(a, 99.9)),
                        "mean": float(v.mean()), "std": float(v.std())}
        self.layers.append(layer)
        return out

    def channels(self, t):
        return self.vals[t]["cal"].shape[1]

    def conv(self, t, cout, k=3, pad=1):
        cin = self.channels(t)
        w = self.rng.standard_normal((cout, cin, k, k)) * math.sqrt(1.0 / (cin * k * k))
        b = self.rng.standard_normal(cout) * 0.1
        return self.linear(
            "Conv", t, w, b, lambda v, w, b: np_conv(v, w, b, pad), 0,
            kernel_shape=[k, k], strides=[1, 1], pads=[pad] * 4,
        )

    def conv_transpose(self, t, cout, k=2):
        cin = self.channels(t)
        w = self.rng.standard_normal((cin, cout, k, k)) * math.sqrt(1.0 / cin)
        b = self.rng.standard_normal(cout) * 0.1
        return self.linear(
            "ConvTranspose", t, w, b, lambda v, w, b: np_conv_transpose(v, w, b, k), 1,
            kernel_shape=[k, k], strides=[k, k],
        )

    def gemm(self, t, cout):
        cin = self.vals[t]["cal"].shape[1]
        w = self.rng.standard_normal((cout, cin)) * math.sqrt(1.0 / cin)
        b = self.rng.standard_normal(cout) * 0.1
        return self.linear("Gemm", t, w, b, np_gemm, 0, transB=1)

    def quad(self, t):
        """a*t*t + b*t as Mul(Mul(t, t), a) + Mul(t, b), a in [0.115, 0.125] and b in [0.9, 0.96] drawn for
        this layer: on [-4, 4] it stays within [-2, 6] (at most 16a + 4b <= 5.84 at t = 4; at least
        min(16a - 4b, -b*b / (4a)) >= -2, as b <= 0.5 + 4a). Mostly linear on that range (b*t dominates),
        which keeps rare large values from growing much faster than typical ones layer after layer."""
        a = round(float(self.rng.uniform(0.115, 0.125)), 3)
        b = round(float(self.rng.uniform(0.9, 0.96)), 3)
        an, bn = self.const(self.fresh("a"), a), self.const(self.fresh("b"), b)
        fa, fb = float(F32(a)), float(F32(b))
        d = self.depth[t]
        sq = self.emit("Mul", [t, t], self.apply(t, lambda v: v * v), d + 1, "quad", keep=False)
        att = self.emit("Mul", [sq, an], self.apply(t, lambda v: fa * v * v), d + 1, "quad", keep=False)
        bt = self.emit("Mul", [t, bn], self.apply(t, lambda v: fb * v), d, "quad", keep=False)
        out = self.emit("Add", [att, bt], self.apply(t, lambda v: fa * v * v + fb * v), d + 1, "quad")
        self.activations.append({"a": a, "b": b})
        return out

    def avgpool(self, t, k=2):
        return self.emit("AveragePool", [t], self.apply(t, lambda v: np_avgpool(v, k)), self.depth[t],
                         kernel_shape=[k, k], strides=[k, k])

    def global_avgpool(self, t):
        return self.emit("GlobalAveragePool", [t], self.apply(t, lambda v: v.mean(axis=(2, 3), keepdims=True)),
                         self.depth[t])

    def flatten(self, t):
        return self.emit("Flatten", [t], self.apply(t, lambda v: v.reshape(v.shape[0], -1)), self.depth[t], axis=1)

    def concat(self, a, b):
        vals = {k: np.concatenate([self.vals[a][k], self.vals[b][k]], axis=1) for k in self.vals[a]}
        return self.emit("Concat", [a, b], vals, max(self.depth[a], self.depth[b]), axis=1)

    def add(self, a, b):
        vals = {k: self.vals[a][k] + self.vals[b][k] for k in self.vals[a]}
        return self.emit("Add", [a, b], vals, max(self.depth[a], self.depth[b]))

    def polynomial(self, t, func, degree, widen):
        """ai.blindfold::Polynomial, Chebyshev basis, approximating func on the interval t spans over the
        calibration batch, widened by `widen` of its width."""
        seen = self.vals[t]["cal"]
        lo, hi = float(seen.min()), float(seen.max())
        d = (hi - lo) * widen / 2
        lo, hi = float(F32(lo - d)), float(F32(hi + d))
        coef = C.Chebyshev.interpolate(func, degree, domain=[lo, hi]).coef.astype(F32)
        coefficients = [float(v) for v in coef]
        grid = np.linspace(lo, hi, 4001)
        err = float(np.abs(np_chebyshev(grid, coefficients, (lo, hi)) - func(grid)).max())
        test = self.vals[t]["test"]
        within = float(((test >= lo) & (test <= hi)).mean())
        cost = math.ceil(math.log2(degree + 1)) + (0 if self.kind[t] in ("Conv", "Gemm", "Add") else 1)
        out = self.emit(
            "Polynomial", [t], self.apply(t, lambda v: np_chebyshev(v, coefficients, (lo, hi))),
            self.depth[t] + cost, domain=DOMAIN, coefficients=coefficients, basis="chebyshev", interval=[lo, hi],
        )
        self.custom = True
        entry = {
            "kind": "polynomial",
            "op": f"{DOMAIN}::Polynomial",
            "basis": "chebyshev",
            "degree": degree,
            "approximates": func.__name__,
            "interval": [lo, hi],
            "observed": [float(seen.min()), float(seen.max())],
            "coefficients": coefficients,
            "max_abs_error_on_interval": err,
            "levels": cost,
        }
        self.activations.append(entry)
        self.polynomials.append({"node": out, **entry, "test_observed": [float(test.min()), float(test.max())],
                                 "test_within_interval": within})
        return out

    def largest(self, batch):
        """The largest |value| of any tensor (the input excluded) on `batch`, and the node that holds it."""
        name = max(self.peak, key=lambda k: self.peak[k][batch].max())
        return {"max_abs": float(self.peak[name][batch].max()), "node": name, "depth": int(self.depth[name])}

    def range_check(self):
        """Each tensor's largest |value| on each test image over its largest on the calibration batch."""
        names = list(self.peak)
        cal = np.array([self.peak[k]["cal"].max() for k in names])
        ratio = np.stack([self.peak[k]["test"] for k in names]) / np.maximum(cal, 1e-12)[:, None]  # node x image
        node = int(ratio.max(axis=1).argmax())
        per_image = ratio.max(axis=0)
        exceeding = [int(i) for i in np.nonzero(per_image > TEST_MARGIN)[0]]
        return {
            "max_abs_intermediate": {"calibration": self.largest("cal"), "test": self.largest("test")},
            "largest_test_over_calibration_ratio": {"ratio": float(ratio[node].max()), "node": names[node],
                                                     "image": int(ratio[node].argmax()),
                                                     "calibration": float(cal[node]),
                                                     "test": float(self.peak[names[node]]["test"].max())},
            "margin": TEST_MARGIN,
            "tensors_within_margin": not exceeding,
            "test_images_within_margin": 1 - len(exceeding) / len(per_image),
            "test_images_exceeding_margin": [
                {"image": i, "ratio": float(per_image[i]),
                 "nodes": [names[n] for n in np.nonzero(ratio[:, i] > TEST_MARGIN)[0]]} for i in exceeding],
            "largest_ratio_other_images": float(np.delete(per_image, exceeding).max()),
        }

    def layer_summary(self):
        return [{"node": l["node"], "op": l["op"],
                 "calibration_max_abs": l["cal"]["max_abs"], "calibration_p99.9_abs": l["cal"]["p99.9_abs"],
                 "calibration_std": l["cal"]["std"],
                 "test_max_abs": l["test"]["max_abs"], "test_p99.9_abs": l["test"]["p99.9_abs"]}
                for l in self.layers]

    def model(self, name, out, in_shape, out_shape, nodes=None, custom=None):
        nodes = [copy.deepcopy(n) for n in (nodes if nodes is not None else self.nodes)]
        for n in nodes:
            n.output[:] = ["logits" if o == out else o for o in n.output]
            n.input[:] = ["logits" if i == out else i for i in n.input]
        graph = helper.make_graph(
            nodes,
            name,
            [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["batch", *in_shape])],
            [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["batch", *out_shape])],
            initializer=self.inits,
        )
        custom = self.custom if custom is None else custom
        opsets = [helper.make_opsetid("", OPSET)] + ([helper.make_opsetid(DOMAIN, 1)] if custom else [])
        m = helper.make_model(graph, opset_imports=opsets, producer_name="blindfold models/synthetic", ir_version=8)
        onnx.checker.check_model(m, full_check=not custom)
        return m

    def standard_nodes(self):
        """The nodes with every Polynomial spelt as standard ops (power basis, Horner), for onnxruntime."""
        nodes = []
        extra = 0
        for n in self.nodes:
            if n.op_type != "Polynomial":
                nodes.append(n)
                continue
            attrs = {a.name: a for a in n.attribute}
            c = np.asarray(list(attrs["coefficients"].floats), np.float64)
            lo, hi = attrs["interval"].floats
            p = C.cheb2poly(c)
            s, o = 2.0 / (hi - lo), -(lo + hi) / (hi - lo)

            def k(v):
                nonlocal extra
                extra += 1
                return self.const(f"horner_k{extra}", v)

            def node(op, inputs, out=None):
                nonlocal extra
                extra += 1
                out = out or f"horner_{extra}"
                nodes.append(helper.make_node(op, inputs, [out]))
                return out

            t = node("Add", [node("Mul", [n.input[0], k(s)]), k(o)])
            y = k(p[-1])
            for i in range(len(p) - 2, -1, -1):
                y = node("Add", [node("Mul", [y, t]), k(p[i])], n.output[0] if i == 0 else None)
        return nodes


def run_ort(model, x):
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = 1
    opts.inter_op_num_threads = 1
    sess = ort.InferenceSession(model.SerializeToString(), opts, providers=["CPUExecutionProvider"])
    return np.concatenate([sess.run(None, {"input": x[i : i + 16]})[0] for i in range(0, len(x), 16)])


# ----------------------------------------------------------------------------- data


def sha256(path):
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def load(data, file):
    path = os.path.join(data, "dermamnist", file)
    z = np.load(path)
    train = z["train_images"]
    # per-channel mean and std of pixel / 255 over the training images, in chunks
    total, squares, count = np.zeros(3), np.zeros(3), 0
    for i in range(0, len(train), 1000):
        chunk = train[i : i + 1000].astype(np.float64) / 255.0
        total += chunk.sum(axis=(0, 1, 2))
        squares += (chunk * chunk).sum(axis=(0, 1, 2))
        count += chunk.shape[0] * chunk.shape[1] * chunk.shape[2]
    mean = [round(float(v), 4) for v in total / count]
    std = [round(float(v), 4) for v in np.sqrt(squares / count - (total / count) ** 2)]

    def norm(u8):
        x = u8.transpose(0, 3, 1, 2).astype(np.float32) / np.float32(255.0)
        return ((x - np.asarray(mean, F32).reshape(1, -1, 1, 1)) / np.asarray(std, F32).reshape(1, -1, 1, 1)).astype(F32)

    return {
        "cal": norm(train[:CALIBRATION_IMAGES]),
        "test": norm(z["test_images"][:TEST_IMAGES]),
        "test_labels": z["test_labels"][:TEST_IMAGES, 0].astype(np.int64),
        "mean": mean,
        "std": std,
        "hashes": {f"dermamnist/{file}": sha256(path)},
    }


# ----------------------------------------------------------------------------- networks


def unet(d, rng):
    net = Net(rng, {"cal": d["cal"], "test": d["test"]})
    x = net.quad(net.conv("input", 8))
    s1 = net.quad(net.conv(x, 8))
    x = net.avgpool(s1)
    s2 = net.quad(net.conv(x, 16))
    x = net.avgpool(s2)
    x = net.quad(net.conv(x, 16))
    x = net.conv_transpose(x, 16)
    x = net.concat(x, s2)
    x = net.quad(net.conv(x, 16))
    x = net.conv_transpose(x, 8)
    x = net.concat(x, s1)
    x = net.quad(net.conv(x, 8))
    return net, net.conv(x, 1, k=1, pad=0)


def resnet(d, rng, blocks, degree):
    net = Net(rng, {"cal": d["cal"], "test": d["test"]})
    x = net.quad(net.conv("input", 16))
    for _ in range(blocks):
        y = net.quad(net.conv(x, 16))
        y = net.conv(y, 16)
        x = net.polynomial(net.add(y, x), silu, degree, INTERVAL_WIDEN)
    x = net.flatten(net.global_avgpool(x))
    return net, net.gemm(x, len(DERMA_CLASSES))


def versions():
    return f"numpy {np.__version__}, onnx {onnx.__version__}, onnxruntime {ort.__version__}"


def write(name, model, manifest):
    out_dir = os.path.join(OUT, name)
    os.makedirs(out_dir, exist_ok=True)
    data = model.SerializeToString()
    with open(os.path.join(out_dir, "model.onnx"), "wb") as f:
        f.write(data)
    with open(os.path.join(out_dir, "manifest.json"), "w") as f:
        json.dump(manifest, f, indent=2)
        f.write("\n")
    return len(data)


def stats(y):
    return {"mean": float(y.mean()), "std": float(y.std()), "min": float(y.min()), "max": float(y.max())}


def training(command, net, d, blocks=None, degree=None):
    t = {
        "command": command,
        "note": "random calibrated weights",
        "script": "models/synthetic/generate.py",
        "seed": SEED,
        "calibration": f"each Conv, ConvTranspose and Gemm rescaled per output channel to mean 0 and largest "
        f"|value| {CALIBRATION_MAX:g} (over all images and positions) on the first {CALIBRATION_IMAGES} training "
        f"images; quadratic activations a*t*t + b*t with a in [0.115, 0.125], b in [0.9, 0.96] (within [-2, 6] "
        f"on [-{CALIBRATION_MAX:g}, {CALIBRATION_MAX:g}])",
        "range_check": f"first {TEST_IMAGES} test images, result in metrics: each tensor's largest |value| checked "
        f"against {TEST_MARGIN:g} times its largest on the calibration images, each polynomial's inputs against its "
        f"interval",
        "parameters": int(net.parameters),
        "framework": versions(),
        "opset": OPSET,
        "data": d["hashes"],
    }
    if blocks is not None:
        t["blocks"] = blocks
        t["polynomial_degree"] = degree
        t["intervals"] = (
            f"SiLU on the range of the polynomial's input over the first {CALIBRATION_IMAGES} training images, "
            f"widened by {round(INTERVAL_WIDEN * 100)} % of its width (half at each end)"
        )
    return t


def range_metrics(net, out):
    """The range figures both manifests record: outputs, tensors and pre-activations, calibration vs test."""
    cal, test = net.vals[out]["cal"], net.vals[out]["test"]
    return {
        "output_range": {"calibration": [float(cal.min()), float(cal.max())],
                         "test": [float(test.min()), float(test.max())]},
        **net.range_check(),
        "pre_activations": net.layer_summary(),
    }


def report(name, net, metrics):
    print(f"{name}: pre-activations (largest |value| / 99.9th percentile of |value|, calibration -> test):")
    for l in metrics["pre_activations"]:
        print(f"  {l['node']:>18} {l['op']:<13} cal {l['calibration_max_abs']:.4f} / {l['calibration_p99.9_abs']:.3f}"
              f" (std {l['calibration_std']:.3f})   test {l['test_max_abs']:.3f} / {l['test_p99.9_abs']:.3f}")
    m, r = metrics["max_abs_intermediate"], metrics["largest_test_over_calibration_ratio"]
    print(f"  largest |intermediate|: calibration {m['calibration']['max_abs']:.3f} ({m['calibration']['node']}), "
          f"test {m['test']['max_abs']:.3f} ({m['test']['node']}); worst test/calibration ratio {r['ratio']:.3f} "
          f"({r['node']}: {r['calibration']:.3f} -> {r['test']:.3f}), within {TEST_MARGIN:g}x: "
          f"{metrics['tensors_within_margin']}; images beyond: {metrics['test_images_exceeding_margin']}, largest ratio "
          f"on the other images {metrics['largest_ratio_other_images']:.3f}")
    print(f"  output range: calibration {metrics['output_range']['calibration']}, test {metrics['output_range']['test']}")


def build_unet(data, command):
    d = load(data, "dermamnist_64.npz")
    net, out = unet(d, np.random.default_rng(SEED))
    ref = net.vals[out]["test"]
    model = net.model("unet-shape", out, [3, 64, 64], [1, 64, 64])
    got = run_ort(model, d["test"])
    diff = float(np.abs(got - ref).max())
    assert diff < 1e-3 * max(1.0, float(np.abs(ref).max())), f"unet: onnxruntime differs by {diff}"
    depth = net.depth[out]
    metrics = {
        "note": "no quality metric: random calibrated weights, not a trained model, and dermamnist_64 has no masks; "
        f"statistics of the plaintext reference (numpy, float64) on the first {TEST_IMAGES} test images, and the "
        f"same ranges on the {CALIBRATION_IMAGES} calibration (training) images",
        "images": TEST_IMAGES,
        "calibration_images": CALIBRATION_IMAGES,
        "output": stats(ref),
        "fraction_above_threshold": float((ref > 0.5).mean()),
        **range_metrics(net, out),
        "onnxruntime_max_abs_diff": diff,
    }
    manifest = {
        "name": "unet-shape",
        "version": 1,
        "description": "Synthetic U-Net shape with random calibrated weights, for benchmarks only (not trained): "
        "64x64 RGB -> conv 3x3 (8) -> quad -> conv 3x3 (8) -> quad (s1) -> avgpool 2 -> conv 3x3 (16) -> quad (s2) "
        "-> avgpool 2 -> conv 3x3 (16) -> quad -> convtranspose 2x2/2 (16) -> concat s2 -> conv 3x3 (16) -> quad "
        "-> convtranspose 2x2/2 (8) -> concat s1 -> conv 3x3 (8) -> quad -> conv 1x1 (1) -> 1x64x64",
        "input": {"shape": [3, 64, 64], "layout": "CHW", "channel_order": "RGB"},
        "preprocessing": {"resize": RESIZE, "scale": "pixel / 255", "mean": d["mean"], "std": d["std"]},
        "classes": ["lesion"],
        "positive_class": None,
        "multiplicative_depth": depth,
        "output_bound": output_bound(ref),
        "task": {"kind": "segmentation", "threshold": 0.5},
        "dataset": "dermamnist_64",
        "activations": net.activations,
        "metrics": metrics,
        "training": training(command, net, d),
    }
    size = write("unet-shape", model, manifest)
    report("unet-shape", net, metrics)
    print(f"unet-shape: depth {depth}, {net.parameters} parameters, {size} bytes, output {stats(ref)}, "
          f"onnxruntime max |diff| {diff:.1e}")
    return depth, net.parameters, size


def build_resnet(data, command, blocks, degree):
    d = load(data, "dermamnist.npz")
    net, out = resnet(d, np.random.default_rng(SEED + 1), blocks, degree)
    ref = net.vals[out]["test"]
    model = net.model("resnet-shape", out, [3, 28, 28], [len(DERMA_CLASSES)])
    standard = net.model("resnet-shape-standard", out, [3, 28, 28], [len(DERMA_CLASSES)],
                         nodes=net.standard_nodes(), custom=False)
    got = run_ort(standard, d["test"])
    diff = float(np.abs(got - ref).max())
    assert diff < 1e-3 * max(1.0, float(np.abs(ref).max())), f"resnet: onnxruntime differs by {diff}"
    depth = net.depth[out]
    labels = d["test_labels"]
    pred = ref.argmax(1)
    metrics = {
        "note": "random calibrated weights, not a trained model: the accuracy is at chance by construction (1/7 = "
        "0.14 for a uniform guess; always answering the majority class, melanocytic nevi, would score about 0.67). "
        f"Statistics of the plaintext reference (numpy, float64) on the first {TEST_IMAGES} test images, and the "
        f"same ranges on the {CALIBRATION_IMAGES} calibration (training) images",
        "images": TEST_IMAGES,
        "calibration_images": CALIBRATION_IMAGES,
        "logits": stats(ref),
        "argmax_equals_label": float((pred == labels).mean()),
        "predicted_class_counts": np.bincount(pred, minlength=len(DERMA_CLASSES)).tolist(),
        **range_metrics(net, out),
        "polynomial_inputs_within_interval": [p["test_within_interval"] for p in net.polynomials],
        "polynomials": [{"node": p["node"], "interval": p["interval"], "calibration_observed": p["observed"],
                         "test_observed": p["test_observed"], "max_abs_error_on_interval":
                         p["max_abs_error_on_interval"]} for p in net.polynomials],
        "onnxruntime_max_abs_diff": diff,
        "onnxruntime_note": "onnxruntime ran the same network with each Polynomial node written as Mul/Add ops",
    }
    manifest = {
        "name": "resnet-shape",
        "version": 1,
        "description": f"Synthetic ResNet shape with random calibrated weights, for benchmarks only (not trained): "
        f"DermaMNIST 28x28 RGB, 7 classes: conv 3x3 (16) -> quad -> {blocks} x [conv 3x3 (16) -> quad -> conv 3x3 "
        f"(16) -> add block input -> ai.blindfold::Polynomial (Chebyshev degree {degree}, SiLU)] -> global avgpool "
        f"-> dense 7",
        "input": {"shape": [3, 28, 28], "layout": "CHW", "channel_order": "RGB"},
        "preprocessing": {"resize": RESIZE, "scale": "pixel / 255", "mean": d["mean"], "std": d["std"]},
        "classes": DERMA_CLASSES,
        "positive_class": MELANOMA,
        "multiplicative_depth": depth,
        "output_bound": output_bound(ref),
        "task": {"kind": "classification"},
        "dataset": "dermamnist",
        "activations": net.activations,
        "metrics": metrics,
        "training": training(command, net, d, blocks, degree),
    }
    size = write("resnet-shape", model, manifest)
    report("resnet-shape", net, metrics)
    for p in net.polynomials:
        print(f"  {p['node']}: interval [{p['interval'][0]:.4f}, {p['interval'][1]:.4f}] (calibration observed "
              f"[{p['observed'][0]:.4f}, {p['observed'][1]:.4f}], test [{p['test_observed'][0]:.4f}, "
              f"{p['test_observed'][1]:.4f}]), max |fit - SiLU| {p['max_abs_error_on_interval']:.4f}, test inputs "
              f"within {p['test_within_interval']}")
    print(f"resnet-shape: depth {depth}, {net.parameters} parameters, {size} bytes, logits {stats(ref)}, "
          f"argmax = label {metrics['argmax_equals_label']:.3f}, within intervals "
          f"{metrics['polynomial_inputs_within_interval']}, onnxruntime max |diff| {diff:.1e}")
    return depth, net.parameters, size


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", default=os.path.join(REPO, "..", "shared", "data"))
    p.add_argument("--blocks", type=int, default=RESNET_BLOCKS, help="resnet-shape: residual blocks")
    p.add_argument("--degree", type=int, default=POLY_DEGREE, help="resnet-shape: Chebyshev degree")
    p.add_argument("--out", default=HERE, help="where the two model directories go")
    args = p.parse_args()
    global OUT
    OUT = args.out
    command = "python3 models/synthetic/generate.py"
    if args.blocks != RESNET_BLOCKS or args.degree != POLY_DEGREE:
        command += f" --blocks {args.blocks} --degree {args.degree}"
    print(versions())
    build_unet(args.data, command)
    build_resnet(args.data, command, args.blocks, args.degree)


if __name__ == "__main__":
    main()
