#!/usr/bin/env python3
"""Train Blindfold's HE-friendly models and export them to ONNX with a manifest.

A development tool: nothing in Blindfold's build, tests or service runs it. It needs PyTorch,
onnx and onnxruntime (CPU), for example in a virtual environment outside the repository:

    python3 -m venv /work/venv-train
    /work/venv-train/bin/pip install torch onnx onnxruntime numpy
    /work/venv-train/bin/python models/train/train.py --model mnist-cryptonets --data ../shared/data

Every run is reproducible: fixed seeds, deterministic kernels, 2 threads, the data files'
sha256 and the exact command are written into the manifest. The networks use only what CKKS can
evaluate: convolutions and dense layers (plaintext weights), average pooling (linear), and a
trainable quadratic activation a*x^2 + b*x after batch normalisation. Batch normalisation is
folded into the preceding convolution or dense layer on export, so the ONNX file holds Conv,
Gemm, AveragePool, Flatten and the Mul/Add pattern of the quadratic.

Outputs, for --model NAME, under --out (default: models/ beside this script's directory):
    NAME/model.onnx, NAME/manifest.json, and the test fixture
    crates/nn/tests/fixtures/NAME.json (pixels of the first test images and onnxruntime logits).
`--fixtures-only` writes the importer fixtures (refused.onnx, patterns.onnx) instead.
"""

import argparse
import copy
import gzip
import hashlib
import json
import os
import random
import shlex
import sys
import time

import numpy as np
import onnx
import onnxruntime as ort
import torch
import torch.nn as nn
import torch.nn.functional as F

REPO = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", ".."))
FIXTURES = os.path.join(REPO, "crates", "nn", "tests", "fixtures")
OPSET = 13
FIXTURE_IMAGES = 20

DERMA_CLASSES = [
    "actinic keratoses and intraepithelial carcinoma",
    "basal cell carcinoma",
    "benign keratosis-like lesions",
    "dermatofibroma",
    "melanoma",
    "melanocytic nevi",
    "vascular lesions",
]
DERMA_CODES = ["akiec", "bcc", "bkl", "df", "mel", "nv", "vasc"]
MELANOMA = 4


# ----------------------------------------------------------------------------- data


def sha256(path):
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def idx(path):
    b = gzip.open(path).read()
    magic = int.from_bytes(b[:4], "big")
    if magic == 2051:
        n, r, c = (int.from_bytes(b[i : i + 4], "big") for i in (4, 8, 12))
        return np.frombuffer(b, np.uint8, offset=16).reshape(n, r, c)
    return np.frombuffer(b, np.uint8, offset=8)


def load_mnist(data):
    d = os.path.join(data, "mnist")
    files = [
        "train-images-idx3-ubyte.gz",
        "train-labels-idx1-ubyte.gz",
        "t10k-images-idx3-ubyte.gz",
        "t10k-labels-idx1-ubyte.gz",
    ]
    x_tr, y_tr, x_te, y_te = (idx(os.path.join(d, f)) for f in files)
    hashes = {"mnist/" + f: sha256(os.path.join(d, f)) for f in files}
    # The last 5,000 training images are the validation split used for model choice.
    split = {
        "train": (x_tr[:55000, None], y_tr[:55000]),
        "val": (x_tr[55000:, None], y_tr[55000:]),
        "test": (x_te[:, None], y_te),
    }
    return split, hashes


def load_derma(data, dataset="dermamnist"):
    """DermaMNIST at 28x28 (`dermamnist`) or 64x64 (`dermamnist_64`), images as (N, C, H, W) uint8."""
    name = f"dermamnist/{dataset}.npz"
    path = os.path.join(data, name)
    z = np.load(path)
    split = {s: (z[f"{s}_images"].transpose(0, 3, 1, 2), z[f"{s}_labels"][:, 0]) for s in ("train", "val", "test")}
    return split, {name: sha256(path)}


def dataset_of(name):
    if name.startswith("derma64"):
        return "dermamnist_64"
    return "dermamnist" if name.startswith("derma") else "mnist"


# ----------------------------------------------------------------------------- models


class Quad(nn.Module):
    """The trainable quadratic activation a*x^2 + b*x (one level under CKKS).

    With `record` set, it keeps its last input, for the range penalty (see `range_penalty`)."""

    def __init__(self, a=0.1, b=1.0):
        super().__init__()
        self.a = nn.Parameter(torch.tensor(a))
        self.b = nn.Parameter(torch.tensor(b))
        self.record = False
        self.last_input = None

    def forward(self, x):
        if self.record:
            self.last_input = x
        return self.a * (x * x) + self.b * x


def derma64(channels, activation):
    """The 64x64 lesion classifier's shape: per block a 3x3 convolution of stride 2 (padding 1),
    batch norm and the activation, so each block halves the grid (64 -> 32 -> 16 -> 8 with three
    blocks); then one dense layer to the 7 classes.

    Strided convolutions, not convolution + average pooling: in the latency packing a stride-2
    convolution writes its output channels into the free slots of each 2x2 cell, so the feature
    maps stay dense in the slots, while a pooled grid keeps one slot block per channel and every
    later layer pays for the empty slots (16-32-64-64 with pooling: 3.2 s per image, 7.8 GB of
    plaintext diagonals; this shape: 1.8 s and 3.0 GB; models/README.md). The depth is one level
    per convolution, activation (quadratic) and the dense layer."""
    layers, c_in, side = [], 3, 64
    for c in channels:
        layers += [nn.Conv2d(c_in, c, 3, stride=2, padding=1), nn.BatchNorm2d(c), activation()]
        c_in, side = c, side // 2
    layers += [nn.Flatten(), nn.Linear(c_in * side * side, 7)]
    return nn.Sequential(*layers)


def build(name, channels=(8, 16)):
    if name == "mnist-cryptonets":
        # CryptoNets: 5x5 conv stride 2 with 1 pixel of padding (5x13x13), square-like, dense 100,
        # square-like, dense 10.
        return nn.Sequential(
            nn.Conv2d(1, 5, 5, stride=2, padding=1),
            nn.BatchNorm2d(5),
            Quad(),
            nn.Flatten(),
            nn.Linear(5 * 13 * 13, 100),
            nn.BatchNorm1d(100),
            Quad(),
            nn.Linear(100, 10),
        )
    if name == "mnist-lenet5":
        return nn.Sequential(
            nn.Conv2d(1, 6, 5),
            nn.BatchNorm2d(6),
            Quad(),
            nn.AvgPool2d(2),
            nn.Conv2d(6, 16, 5),
            nn.BatchNorm2d(16),
            Quad(),
            nn.AvgPool2d(2),
            nn.Flatten(),
            nn.Linear(16 * 4 * 4, 120),
            nn.BatchNorm1d(120),
            Quad(),
            nn.Linear(120, 10),
        )
    if name == "derma-lenet5":
        c1, c2 = channels
        return nn.Sequential(
            nn.Conv2d(3, c1, 5),
            nn.BatchNorm2d(c1),
            Quad(),
            nn.AvgPool2d(2),
            nn.Conv2d(c1, c2, 5),
            nn.BatchNorm2d(c2),
            Quad(),
            nn.AvgPool2d(2),
            nn.Flatten(),
            nn.Linear(c2 * 4 * 4, 120),
            nn.BatchNorm1d(120),
            Quad(),
            nn.Linear(120, 7),
        )
    if name == "derma-relu":
        # A standard network of derma-lenet5's shape with ReLU: what a data scientist brings,
        # and what `blindfold model convert` turns into an HE model. Average pooling, because
        # replacing a trained network's max pooling afterwards costs it more than any
        # activation approximation does (measured in models/README.md).
        c1, c2 = channels
        return nn.Sequential(
            nn.Conv2d(3, c1, 5),
            nn.BatchNorm2d(c1),
            nn.ReLU(),
            nn.AvgPool2d(2),
            nn.Conv2d(c1, c2, 5),
            nn.BatchNorm2d(c2),
            nn.ReLU(),
            nn.AvgPool2d(2),
            nn.Flatten(),
            nn.Linear(c2 * 4 * 4, 120),
            nn.BatchNorm1d(120),
            nn.ReLU(),
            nn.Linear(120, 7),
        )
    if name == "derma64":
        return derma64(channels, Quad)
    if name == "derma64-relu":
        # The same shape with ReLU: the distillation teacher of derma64, and the standard network
        # `blindfold model convert` turns into derma64-relu-he.
        return derma64(channels, nn.ReLU)
    raise SystemExit(f"unknown model {name}")


def fold_batch_norm(model):
    """A copy of `model` with every BatchNorm folded into the Conv2d/Linear before it."""
    layers = []
    for m in copy.deepcopy(model):
        if isinstance(m, (nn.BatchNorm1d, nn.BatchNorm2d)):
            prev = layers[-1]
            scale = m.weight.detach() / torch.sqrt(m.running_var + m.eps)
            shift = m.bias.detach() - m.running_mean * scale
            w = prev.weight.detach() * scale.reshape(-1, *([1] * (prev.weight.dim() - 1)))
            b = (prev.bias.detach() if prev.bias is not None else torch.zeros_like(scale)) * scale + shift
            with torch.no_grad():
                prev.weight.copy_(w)
                prev.bias.copy_(b)
        else:
            layers.append(m)
    out = nn.Sequential(*layers)
    out.eval()
    return out


# depth under CKKS: conv/dense by plaintext weights 1 level, quadratic activation 1 level (its
# coefficients fold into the neighbouring linear layers), average pooling 0 (folds into the next
# layer's weights).
def depth(model):
    return sum(1 for m in model if isinstance(m, (nn.Conv2d, nn.Linear, Quad)))


# ----------------------------------------------------------------------------- training


def augment(x, name, jitter=0.0):
    """Random shifts of up to 2 pixels for digits; flips and 90-degree turns for lesions, and with
    `jitter` > 0 a random gain (1 +- jitter) and offset (+- jitter) per image and channel."""
    if name.startswith("mnist"):
        n = x.shape[0]
        pad = F.pad(x, (2, 2, 2, 2))
        dx, dy = random.randint(0, 4), random.randint(0, 4)
        del n
        return pad[:, :, dy : dy + 28, dx : dx + 28]
    if jitter > 0:
        n, c = x.shape[:2]
        gain = 1 + (torch.rand(n, c, 1, 1) * 2 - 1) * jitter
        offset = (torch.rand(n, c, 1, 1) * 2 - 1) * jitter
        x = x * gain + offset
    if random.random() < 0.5:
        x = x.flip(3)
    if random.random() < 0.5:
        x = x.flip(2)
    return torch.rot90(x, random.randint(0, 3), (2, 3))


def normalise(x_u8, mean, std):
    x = torch.from_numpy(x_u8.astype(np.float32) / 255.0)
    m = torch.tensor(mean, dtype=torch.float32).reshape(1, -1, 1, 1)
    s = torch.tensor(std, dtype=torch.float32).reshape(1, -1, 1, 1)
    return (x - m) / s


def predict(model, x, batch=1000):
    model.eval()
    out = []
    with torch.no_grad():
        for i in range(0, x.shape[0], batch):
            out.append(model(x[i : i + batch]))
    return torch.cat(out).numpy()


def auc(scores, positive):
    """Area under the ROC curve (Mann-Whitney, ties counted half)."""
    order = np.argsort(scores, kind="mergesort")
    s = scores[order]
    ranks = np.empty(len(s))
    i = 0
    while i < len(s):
        j = i
        while j + 1 < len(s) and s[j + 1] == s[i]:
            j += 1
        ranks[i : j + 1] = (i + j) / 2 + 1
        i = j + 1
    r = np.empty(len(s))
    r[order] = ranks
    p = positive.sum()
    n = len(positive) - p
    return float((r[positive].sum() - p * (p + 1) / 2) / (p * n))


def metrics(logits, labels, classes, melanoma=None):
    pred = logits.argmax(1)
    out = {"images": int(len(labels)), "accuracy": float((pred == labels).mean())}
    recall = []
    for c in range(len(classes)):
        mask = labels == c
        recall.append(float((pred[mask] == c).mean()) if mask.any() else 0.0)
    if melanoma is not None:
        z = logits - logits.max(1, keepdims=True)
        prob = np.exp(z) / np.exp(z).sum(1, keepdims=True)
        out["balanced_accuracy"] = float(np.mean(recall))
        out["per_class_recall"] = {DERMA_CODES[c]: recall[c] for c in range(len(classes))}
        out["melanoma_auc"] = auc(prob[:, melanoma], labels == melanoma)
    return out


def range_penalty(model, bound):
    """mean(relu(|x| - bound)^2) over every quadratic activation's input in the last forward pass.

    A quadratic activation squares whatever reaches it, so an input far outside the training
    range explodes layer after layer, and under CKKS overflows the planned scale. Keeping the
    pre-activations inside +-bound in training is what keeps test images there too."""
    over = [F.relu(q.last_input.abs() - bound).pow(2).mean() for q in model if isinstance(q, Quad)]
    return sum(over) if over else torch.zeros(())


def operating_point(val_logits, val_labels, test_logits, test_labels, sensitivity):
    """The melanoma-probability threshold flagging `sensitivity` of the validation split's
    melanomas, and its sensitivity and specificity on test: the same rule as
    `nn::metrics::threshold_for_sensitivity` (the k-th highest positive score, k = ceil(s * P))."""

    def melanoma_probability(logits):
        z = logits - logits.max(1, keepdims=True)
        return (np.exp(z) / np.exp(z).sum(1, keepdims=True))[:, MELANOMA]

    val = melanoma_probability(val_logits)
    flagged = np.sort(val[val_labels == MELANOMA])[::-1]
    k = max(1, int(np.ceil(sensitivity * len(flagged) - 1e-9)))
    threshold = float(flagged[min(k, len(flagged)) - 1])
    test = melanoma_probability(test_logits)
    positive = test_labels == MELANOMA
    return {
        "threshold": threshold,
        "target_sensitivity": sensitivity,
        "chosen_on": "val",
        "test_sensitivity": float((test[positive] >= threshold).mean()),
        "test_specificity": float((test[~positive] < threshold).mean()),
    }


def score(m, name):
    """The number model choice on the validation split maximises."""
    if name.startswith("derma"):
        # Accuracy alone rewards predicting nevi; balanced accuracy and the melanoma AUC keep the
        # minority classes in view.
        return m["accuracy"] + 0.5 * m["balanced_accuracy"] + 0.5 * m["melanoma_auc"]
    return m["accuracy"]


def train(args):
    torch.manual_seed(args.seed)
    np.random.seed(args.seed)
    random.seed(args.seed)
    torch.set_num_threads(args.threads)
    torch.use_deterministic_algorithms(True)

    derma = args.model.startswith("derma")
    split, hashes = load_derma(args.data, dataset_of(args.model)) if derma else load_mnist(args.data)
    x_tr_u8, y_tr = split["train"]
    if derma:
        flat = x_tr_u8.astype(np.float64) / 255.0
        mean = [round(float(v), 4) for v in flat.mean(axis=(0, 2, 3))]
        std = [round(float(v), 4) for v in flat.std(axis=(0, 2, 3))]
        classes = DERMA_CLASSES
    else:
        mean, std = [0.1307], [0.3081]
        classes = [str(d) for d in range(10)]
    xs = {s: normalise(split[s][0], mean, std) for s in split}
    ys = {s: torch.from_numpy(split[s][1].astype(np.int64)) for s in split}

    model = build(args.model, tuple(int(c) for c in args.channels.split(",")))
    teacher = None
    if args.teacher:
        # Distillation: the teacher's softened probabilities on the same augmented batch.
        options = ort.SessionOptions()
        options.intra_op_num_threads = args.threads
        teacher = ort.InferenceSession(args.teacher, options, providers=["CPUExecutionProvider"])
    quads = [m for m in model if isinstance(m, Quad)]
    for q in quads:
        q.record = args.penalty > 0
    counts = np.bincount(y_tr, minlength=len(classes))
    if derma:
        # Class imbalance (67 % nevi) handled on purpose: loss weights ~ 1/frequency^power
        # (default 1/sqrt), normalised to mean 1. Full inverse frequency trades too much accuracy
        # for minority-class recall.
        w = (counts / counts.sum()) ** -args.class_weight_power
        weight = torch.tensor(w / w.mean(), dtype=torch.float32)
    else:
        weight = None
    opt = torch.optim.Adam(model.parameters(), lr=args.lr, weight_decay=args.weight_decay)
    steps = args.epochs * ((len(y_tr) + args.batch - 1) // args.batch)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=args.lr, total_steps=steps)
    best, best_state, best_epoch = -1.0, None, -1
    n = len(y_tr)
    for epoch in range(args.epochs):
        model.train()
        t0 = time.time()
        perm = torch.randperm(n)
        total = 0.0
        for i in range(0, n, args.batch):
            idx_ = perm[i : i + args.batch]
            if len(idx_) < 2:
                continue
            x = augment(xs["train"][idx_], args.model, args.jitter)
            logits = model(x)
            loss = F.cross_entropy(logits, ys["train"][idx_], weight=weight)
            if teacher is not None:
                t = args.temperature
                soft = torch.from_numpy(teacher.run(None, {"input": x.contiguous().numpy()})[0])
                kl = F.kl_div(F.log_softmax(logits / t, 1), F.softmax(soft / t, 1), reduction="batchmean")
                loss = (1 - args.distill) * loss + args.distill * t * t * kl
            if quads and args.penalty > 0:
                loss = loss + args.penalty * range_penalty(model, args.bound)
            opt.zero_grad()
            loss.backward()
            nn.utils.clip_grad_norm_(model.parameters(), 5.0)
            opt.step()
            sched.step()
            total += loss.item() * len(idx_)
        val = metrics(predict(model, xs["val"]), split["val"][1], classes, MELANOMA if derma else None)
        s = score(val, args.model)
        print(f"epoch {epoch + 1}/{args.epochs} loss {total / n:.4f} val {json.dumps(val)} ({time.time() - t0:.0f}s)", flush=True)
        if s > best:
            best, best_epoch = s, epoch + 1
            best_state = {k: v.clone() for k, v in model.state_dict().items()}
    model.load_state_dict(best_state)
    model.eval()
    for q in quads:
        q.record, q.last_input = False, None
    return model, split, hashes, mean, std, classes, best_epoch


# ----------------------------------------------------------------------------- export


def export(model, path, shape):
    torch.onnx.export(
        model,
        torch.zeros(1, *shape),
        path,
        dynamo=False,
        opset_version=OPSET,
        input_names=["input"],
        output_names=["logits"],
        dynamic_axes={"input": {0: "batch"}, "logits": {0: "batch"}},
    )
    onnx.checker.check_model(onnx.load(path))


def write_manifest(out_dir, manifest):
    """`out_dir/manifest.json`, indented, with a final newline (what the registry stores)."""
    with open(os.path.join(out_dir, "manifest.json"), "w") as f:
        json.dump(manifest, f, indent=2)
        f.write("\n")


def ort_logits(path, x):
    sess = ort.InferenceSession(path, providers=["CPUExecutionProvider"])
    return np.concatenate([sess.run(None, {"input": x[i : i + 500]})[0] for i in range(0, len(x), 500)])


def run_model(args):
    model, split, hashes, mean, std, classes, best_epoch = train(args)
    derma = args.model.startswith("derma")
    folded = fold_batch_norm(model)
    for q in folded:
        if isinstance(q, Quad):
            q.record, q.last_input = False, None
    out_dir = os.path.join(args.out, args.model)
    os.makedirs(out_dir, exist_ok=True)
    onnx_path = os.path.join(out_dir, "model.onnx")
    shape = split["test"][0].shape[1:]
    export(folded, onnx_path, shape)

    x_te_u8, y_te = split["test"]
    x_te = normalise(x_te_u8, mean, std).numpy()
    logits = ort_logits(onnx_path, x_te)
    torch_logits = predict(model, torch.from_numpy(x_te))
    gap = float(np.abs(logits - torch_logits).max())
    test = metrics(logits, y_te, classes, MELANOMA if derma else None)
    val_logits = ort_logits(onnx_path, normalise(split["val"][0], mean, std).numpy())
    val = metrics(val_logits, split["val"][1], classes, MELANOMA if derma else None)
    print(f"test {json.dumps(test)}; onnx vs torch max |diff| {gap:.2e}")
    train_logits = ort_logits(onnx_path, normalise(split["train"][0], mean, std).numpy())

    quads = [m for m in folded if isinstance(m, Quad)]
    manifest = {
        "name": args.model,
        "version": 1,
        "description": describe(args.model, args.channels.split(",")),
        "input": {"shape": list(shape), "layout": "CHW", "channel_order": "RGB" if derma else "gray"},
        "preprocessing": {
            "resize": "stretch to the input height and width (aspect ratio not kept), bicubic (Catmull-Rom) filter",
            "scale": "pixel / 255",
            "mean": mean,
            "std": std,
        },
        "classes": classes,
        "positive_class": MELANOMA if derma else None,
        # A standard network has none until `blindfold model convert` makes it polynomial.
        "multiplicative_depth": 0 if args.model in STANDARD else depth(folded),
        "dataset": dataset_of(args.model),
        "activations": [{"a": float(q.a), "b": float(q.b)} for q in quads],
        "metrics": {
            "test": test,
            "val": val,
            "split": "test" if not derma else "test (DermaMNIST split)",
            # What the compiler's output room must hold (2^8 by default): the largest |logit|.
            "largest_logit": {"train": float(np.abs(train_logits).max()), "test": float(np.abs(logits).max())},
        },
        "training": {
            "command": args.command,
            "script": "models/train/train.py",
            "seed": args.seed,
            "epochs": args.epochs,
            "chosen_epoch": best_epoch,
            "framework": f"torch {torch.__version__}, onnx {onnx.__version__}, onnxruntime {ort.__version__}",
            "opset": OPSET,
            "data": hashes,
        },
    }
    if derma and args.model.startswith("derma64"):
        manifest["operating_point"] = operating_point(val_logits, split["val"][1], logits, y_te, args.sensitivity)
    if args.teacher:
        manifest["training"]["distillation"] = {
            "teacher": os.path.relpath(os.path.abspath(args.teacher), REPO),
            "teacher_sha256": sha256(args.teacher),
            "weight": args.distill,
            "temperature": args.temperature,
        }
    if quads and args.penalty > 0:
        manifest["training"]["range_penalty"] = {"bound": args.bound, "weight": args.penalty}
    write_manifest(out_dir, manifest)

    if args.model in STANDARD:
        return  # the importer fixtures are of HE-friendly models only
    os.makedirs(args.fixtures, exist_ok=True)
    fixture = {
        "model": args.model,
        "note": "first test images of the dataset as uint8 pixels (C,H,W) and the logits onnxruntime computes for "
        "them after the manifest's preprocessing in float32",
        "images": [
            {"label": int(y_te[i]), "pixels": x_te_u8[i].reshape(-1).tolist(), "logits": logits[i].tolist()}
            for i in range(FIXTURE_IMAGES)
        ],
    }
    with open(os.path.join(args.fixtures, f"{args.model}.json"), "w") as f:
        json.dump(fixture, f, separators=(",", ":"))
        f.write("\n")


def describe(name, channels):
    if name.startswith("derma64"):
        return DESCRIPTIONS[name].format(len(channels), "-".join(channels))
    return DESCRIPTIONS[name].format(*channels)


# Standard networks (ReLU, max pooling): not importable as they are; `blindfold model convert` input.
STANDARD = {"derma-relu", "derma64-relu"}

DESCRIPTIONS = {
    "mnist-cryptonets": "CryptoNets (Gilad-Bachrach et al. 2016) on MNIST: 5x5 conv stride 2 with 5 maps, quadratic "
    "activation, dense 100, quadratic activation, dense 10",
    "mnist-lenet5": "LeNet-5 shape on MNIST: conv 5x5 (6) -> quad -> avgpool 2 -> conv 5x5 (16) -> quad -> avgpool 2 "
    "-> dense 120 -> quad -> dense 10",
    "derma-relu": "Standard twin of derma-lenet5 on DermaMNIST 28x28 RGB, 7 lesion classes: conv 5x5 ({0}) -> ReLU "
    "-> avgpool 2 -> conv 5x5 ({1}) -> ReLU -> avgpool 2 -> dense 120 -> ReLU -> dense 7",
    "derma64": "HE-friendly lesion classifier on DermaMNIST 64x64 RGB, 7 classes, distilled from derma64-relu: "
    "{} blocks of conv 3x3 stride 2 -> quad, then dense 7 (maps {})",
    "derma64-relu": "Standard network of derma64's shape on DermaMNIST 64x64 RGB, 7 classes: {} blocks of conv 3x3 "
    "stride 2 -> ReLU, then dense 7 (maps {})",
    "derma-lenet5": "LeNet-5 shape on DermaMNIST 28x28 RGB, 7 lesion classes: conv 5x5 ({0}) -> quad -> avgpool 2 -> "
    "conv 5x5 ({1}) -> quad -> avgpool 2 -> dense 120 -> quad -> dense 7",
}


# ----------------------------------------------------------------------------- importer fixtures


class MatMulAdd(nn.Module):
    def __init__(self, n, m):
        super().__init__()
        self.w = nn.Parameter(torch.randn(n, m) * 0.2)
        self.b = nn.Parameter(torch.randn(m) * 0.1)

    def forward(self, x):
        return torch.matmul(x, self.w) + self.b


class PowSquare(nn.Module):
    def forward(self, x):
        return torch.pow(x, 2)


class Poly(nn.Module):
    def forward(self, x):
        return 0.25 * x * x - 0.5 * x + 0.125


class Reshape(nn.Module):
    def forward(self, x):
        return x.reshape(-1, 4 * 3 * 3)


def fixtures():
    """Importer fixtures: a model that must be refused, and one that exercises every pattern."""
    torch.manual_seed(7)
    os.makedirs(FIXTURES, exist_ok=True)
    refused = nn.Sequential(
        nn.Conv2d(1, 2, 3), nn.ReLU(), nn.MaxPool2d(2), nn.Flatten(), nn.Linear(2 * 3 * 3, 3), nn.Softmax(dim=1)
    ).eval()
    export(refused, os.path.join(FIXTURES, "refused.onnx"), (1, 8, 8))

    # Unfolded batch norm (eval mode, with non-trivial statistics), Pow, a quadratic built from
    # Mul/Add with constants, average pooling, Reshape, MatMul + Add.
    bn = nn.BatchNorm2d(4)
    with torch.no_grad():
        bn.running_mean.copy_(torch.randn(4) * 0.3)
        bn.running_var.copy_(torch.rand(4) + 0.5)
        bn.weight.copy_(torch.rand(4) + 0.5)
        bn.bias.copy_(torch.randn(4) * 0.2)
    patterns = nn.Sequential(
        nn.Conv2d(2, 4, 3, stride=1, padding=1),
        bn,
        PowSquare(),
        nn.AvgPool2d(2),
        nn.Conv2d(4, 4, 2, stride=1),
        Poly(),
        Reshape(),
        MatMulAdd(36, 5),
        Poly(),
        nn.Linear(5, 3),
    ).eval()
    path = os.path.join(FIXTURES, "patterns.onnx")
    torch.onnx.export(patterns, torch.zeros(1, 2, 8, 8), path, dynamo=False, opset_version=OPSET,
                      input_names=["input"], output_names=["logits"], do_constant_folding=False,
                      dynamic_axes={"input": {0: "batch"}, "logits": {0: "batch"}})
    onnx.checker.check_model(onnx.load(path))
    x = np.random.default_rng(7).standard_normal((4, 2, 8, 8)).astype(np.float32)
    y = ort_logits(path, x)
    with open(os.path.join(FIXTURES, "patterns.json"), "w") as f:
        json.dump({"inputs": x.reshape(4, -1).tolist(), "logits": y.tolist()}, f, separators=(",", ":"))
        f.write("\n")
    print("ops in patterns.onnx:", [n.op_type for n in onnx.load(path).graph.node])


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", choices=sorted(DESCRIPTIONS))
    p.add_argument("--data", default=os.path.join(REPO, "..", "shared", "data"))
    p.add_argument("--out", default=os.path.join(REPO, "models"))
    p.add_argument("--fixtures", default=FIXTURES, help="where the evaluator test fixture goes")
    p.add_argument("--epochs", type=int, default=10)
    p.add_argument("--batch", type=int, default=128)
    p.add_argument("--lr", type=float, default=3e-3)
    p.add_argument("--weight-decay", type=float, default=1e-4)
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--channels", default="8,16", help="derma-lenet5: maps of the two convolutions; derma64: of each block, e.g. 16,32,64")
    p.add_argument("--class-weight-power", type=float, default=0.5, help="derma: loss weight ~ 1/frequency^power")
    p.add_argument("--jitter", type=float, default=0.0, help="derma: colour gain/offset augmentation strength")
    p.add_argument("--teacher", help="distil from this ONNX model (logits), e.g. models/derma64-relu/model.onnx")
    p.add_argument("--distill", type=float, default=0.7, help="weight of the distillation term (rest: labels)")
    p.add_argument("--temperature", type=float, default=4.0, help="distillation temperature")
    p.add_argument("--bound", type=float, default=6.0, help="quadratic activations: input range the penalty keeps to")
    p.add_argument("--penalty", type=float, default=0.0, help="weight of the range penalty (0: none)")
    p.add_argument("--sensitivity", type=float, default=0.9, help="derma64: the operating point's melanoma sensitivity")
    p.add_argument("--fixtures-only", action="store_true")
    args = p.parse_args()
    args.command = " ".join(shlex.quote(a) for a in ["python3", "models/train/train.py", *sys.argv[1:]])
    if args.fixtures_only:
        fixtures()
    elif args.model:
        run_model(args)
    else:
        p.error("--model or --fixtures-only is required")


if __name__ == "__main__":
    main()
