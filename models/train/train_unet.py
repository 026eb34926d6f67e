#!/usr/bin/env python3
"""Train `lesion-unet`, Blindfold's HE-friendly lesion segmenter, and export it with a manifest.

A development tool like train.py (same environment: torch, onnx, onnxruntime, numpy); nothing
in Blindfold's build, tests or service runs it:

    /work/venv-train/bin/python models/train/train_unet.py --data ../shared/data

The network is a U-Net that CKKS can evaluate: 3x3 convolutions with batch norm (folded into
the convolution on export) and a trainable quadratic activation a*x^2 + b*x, 2x2 average
pooling twice, ConvTranspose2d 2/2 up, skip connections by channel concat, and a 1x1 head giving
one logit per pixel:

    64x64x3 -> conv 8 -> quad -> conv 8 -> quad (s1) -> avgpool -> conv 16 -> quad (s2) -> avgpool
    -> conv 16 -> quad -> convT 16 -> concat s2 -> conv 16 -> quad -> convT 8 -> concat s1
    -> conv 8 -> quad -> conv 1x1 -> 1x64x64 logits

Quadratic activations explode on inputs far from what they were trained on, and under CKKS a
value beyond the planned range decrypts to garbage. Training therefore penalises every
pre-activation beyond --bound (a range penalty), and the export measures each activation's and
the output's range on the training images and records them; the manifest's `output_bound`
(the output range times --margin) is what the compiler plans room for, and what decryption
checks.

The same network with ReLU and max pooling (`--twin`) is trained as the plaintext reference
whose Dice the manifest records next to ours.

Data: lesion-seg/lesion_seg_64.npz (HAM10000, lesion-disjoint 2,080/520 split) and
lesion-seg/ph2_64.npz (PH², an outside test set). Metrics at threshold 0.5 on the sigmoid
(logit > 0): Dice and IoU over all pixels of a split, their per-image means, pixel accuracy.

Outputs under --out (default models/): lesion-unet/model.onnx and lesion-unet/manifest.json.
"""

import argparse
import copy
import json
import os
import random
import sys
import time

import numpy as np
import onnx
import onnxruntime as ort
import torch
import torch.nn as nn
import torch.nn.functional as F

from train import REPO, Quad, sha256, write_manifest  # models/train/train.py, beside this file

OPSET = 17

NAME = "lesion-unet"


class Block(nn.Module):
    """conv 3x3 -> batch norm -> activation; records its pre-activation for the range penalty."""

    def __init__(self, cin, cout, relu):
        super().__init__()
        self.conv = nn.Conv2d(cin, cout, 3, padding=1)
        self.bn = nn.BatchNorm2d(cout)
        self.act = nn.ReLU() if relu else Quad()
        self.pre = None

    def forward(self, x):
        self.pre = self.bn(self.conv(x))
        return self.act(self.pre)


class UNet(nn.Module):
    """`channels` (c1, c2, c3) per level; `double`: two convolutions per block (the probe's
    8-16-32 shape) instead of one (two only in the first block)."""

    def __init__(self, relu=False, channels=(8, 16, 16), double=False):
        super().__init__()
        c1, c2, c3 = channels

        def level(cin, cout, twice):
            return nn.ModuleList([Block(cin, cout, relu)] + ([Block(cout, cout, relu)] if twice else []))

        self.enc1 = level(3, c1, True)
        self.enc2 = level(c1, c2, double)
        self.mid = level(c2, c3, double)
        self.up2 = nn.ConvTranspose2d(c3, c2, 2, stride=2)
        self.dec2 = level(2 * c2, c2, double)
        self.up1 = nn.ConvTranspose2d(c2, c1, 2, stride=2)
        self.dec1 = level(2 * c1, c1, double)
        self.head = nn.Conv2d(c1, 1, 1)
        self.pool = (lambda x: F.max_pool2d(x, 2)) if relu else (lambda x: F.avg_pool2d(x, 2))

    def blocks(self):
        return [b for level in (self.enc1, self.enc2, self.mid, self.dec2, self.dec1) for b in level]

    def depth(self):
        """Levels under CKKS: each conv and convT 1, each quadratic 1 (its coefficients fold
        into the conv before it: nothing else sits between them), pooling and concat 0."""
        return 2 * len(self.blocks()) + 2 + 1

    @staticmethod
    def run(level, x):
        for block in level:
            x = block(x)
        return x

    def forward(self, x):
        s1 = self.run(self.enc1, x)
        s2 = self.run(self.enc2, self.pool(s1))
        m = self.run(self.mid, self.pool(s2))
        d2 = self.run(self.dec2, torch.cat([self.up2(m), s2], 1))
        d1 = self.run(self.dec1, torch.cat([self.up1(d2), s1], 1))
        return self.head(d1)


class Folded(nn.Module):
    """The exported network: batch norm folded into each block's convolution."""

    def __init__(self, model):
        super().__init__()
        self.net = copy.deepcopy(model)
        for block in self.net.blocks():
            bn, conv = block.bn, block.conv
            scale = bn.weight.detach() / torch.sqrt(bn.running_var + bn.eps)
            shift = bn.bias.detach() - bn.running_mean * scale
            with torch.no_grad():
                conv.weight.copy_(conv.weight * scale.reshape(-1, 1, 1, 1))
                conv.bias.copy_(conv.bias * scale + shift)
            block.bn = nn.Identity()
        self.net.eval()

    def forward(self, x):
        return self.net(x)


def describe(channels, double):
    c1, c2, c3 = channels
    conv = lambda c: f"conv 3x3 ({c}) -> quad"
    twice = lambda c: f"{conv(c)} -> {conv(c)}" if double else conv(c)
    return (f"HE-friendly U-Net for skin-lesion segmentation at 64x64 RGB: {conv(c1)} -> {conv(c1)} (s1) -> avgpool 2"
            f" -> {twice(c2)} (s2) -> avgpool 2 -> {twice(c3)} -> convtranspose 2x2/2 ({c2}) -> concat s2"
            f" -> {twice(c2)} -> convtranspose 2x2/2 ({c1}) -> concat s1 -> {twice(c1)} -> conv 1x1 (1):"
            " one lesion logit per pixel")


def load(data):
    main = os.path.join(data, "lesion-seg", "lesion_seg_64.npz")
    ph2 = os.path.join(data, "lesion-seg", "ph2_64.npz")
    z, p = np.load(main), np.load(ph2)
    sets = {
        "train": (z["train_images"], z["train_masks"]),
        "test": (z["test_images"], z["test_masks"]),
        "ph2": (p[[k for k in p.files if "image" in k][0]], p[[k for k in p.files if "mask" in k][0]]),
    }
    hashes = {"lesion-seg/lesion_seg_64.npz": sha256(main), "lesion-seg/ph2_64.npz": sha256(ph2)}
    return sets, hashes


def tensors(images, masks, mean, std):
    x = torch.from_numpy(images.astype(np.float32) / 255.0).permute(0, 3, 1, 2)
    x = (x - torch.tensor(mean).reshape(1, 3, 1, 1)) / torch.tensor(std).reshape(1, 3, 1, 1)
    y = torch.from_numpy(masks.astype(np.float32)).unsqueeze(1)
    return x, y


def augment(x, y):
    """Random flips and 90-degree turns, the same for image and mask."""
    if random.random() < 0.5:
        x, y = x.flip(3), y.flip(3)
    if random.random() < 0.5:
        x, y = x.flip(2), y.flip(2)
    k = random.randrange(4)
    return torch.rot90(x, k, (2, 3)), torch.rot90(y, k, (2, 3))


def predict(model, x, batch=64):
    with torch.no_grad():
        return torch.cat([model(x[i : i + batch]) for i in range(0, len(x), batch)])


def scores(logits, masks):
    """Dice, IoU and pixel accuracy at threshold 0.5 (logit > 0)."""
    pred = np.asarray(logits).reshape(len(masks), -1) > 0
    truth = np.asarray(masks).reshape(len(masks), -1) > 0.5
    inter = (pred & truth).sum(1)
    sums = pred.sum(1) + truth.sum(1)
    union = (pred | truth).sum(1)
    per_dice = np.where(sums > 0, 2 * inter / np.maximum(sums, 1), 1.0)
    per_iou = np.where(union > 0, inter / np.maximum(union, 1), 1.0)
    return {
        "dice": float(2 * inter.sum() / sums.sum()),
        "iou": float(inter.sum() / union.sum()),
        "mean_dice": float(per_dice.mean()),
        "mean_iou": float(per_iou.mean()),
        "pixel_accuracy": float((pred == truth).mean()),
        "images": int(len(masks)),
    }


def train(args, relu, sets, mean, std):
    torch.manual_seed(args.seed)
    random.seed(args.seed)
    np.random.seed(args.seed)
    model = UNet(relu, args.channels, args.double)
    x, y = tensors(*sets["train"], mean, std)
    n = len(x)
    opt = torch.optim.Adam(model.parameters(), lr=args.lr, weight_decay=1e-4)
    steps = args.epochs * ((n + args.batch - 1) // args.batch)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=args.lr, total_steps=steps)
    for epoch in range(args.epochs):
        model.train()
        t0, total, penalty_total = time.time(), 0.0, 0.0
        perm = torch.randperm(n)
        for i in range(0, n, args.batch):
            idx = perm[i : i + args.batch]
            xb, yb = augment(x[idx], y[idx])
            out = model(xb)
            prob = torch.sigmoid(out)
            dice = 1 - (2 * (prob * yb).sum() + 1) / (prob.sum() + yb.sum() + 1)
            loss = F.binary_cross_entropy_with_logits(out, yb) + dice
            if not relu:
                # The range penalty: pre-activations beyond the bound, and logits beyond it.
                over = [F.relu(b.pre.abs() - args.bound).pow(2).mean() for b in model.blocks()]
                over.append(F.relu(out.abs() - 4 * args.bound).pow(2).mean())
                penalty = sum(over)
                loss = loss + args.penalty * penalty
                penalty_total += float(penalty) * len(idx)
            opt.zero_grad()
            loss.backward()
            nn.utils.clip_grad_norm_(model.parameters(), 5.0)
            opt.step()
            sched.step()
            total += float(loss) * len(idx)
        model.eval()
        kind = "relu" if relu else "quad"
        print(f"{kind} epoch {epoch + 1}/{args.epochs} loss {total / n:.4f} penalty {penalty_total / n:.5f} "
              f"({time.time() - t0:.0f}s)", flush=True)
    model.eval()
    return model


def ranges(model, x, batch=64):
    """Largest |pre-activation| of each block and the output's min and max over `x`."""
    largest = [0.0] * len(model.blocks())
    lo, hi = float("inf"), float("-inf")
    with torch.no_grad():
        for i in range(0, len(x), batch):
            out = model(x[i : i + batch])
            for k, block in enumerate(model.blocks()):
                largest[k] = max(largest[k], float(block.pre.abs().max()))
            lo, hi = min(lo, float(out.min())), max(hi, float(out.max()))
    return largest, lo, hi


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", default=os.path.join(REPO, "..", "shared", "data"))
    p.add_argument("--out", default=os.path.join(REPO, "models"))
    p.add_argument("--epochs", type=int, default=20)
    p.add_argument("--batch", type=int, default=32)
    p.add_argument("--lr", type=float, default=3e-3)
    p.add_argument("--bound", type=float, default=4.0, help="pre-activation range the penalty keeps to")
    p.add_argument("--penalty", type=float, default=1.0, help="weight of the range penalty")
    # Quadratic networks stretch out-of-distribution inputs far: on HAM test the narrow U-Net's
    # logits reach 5.4x the largest on train. The output's room costs precision (each doubling one
    # bit of q0), and thresholding needs little, so the margin is generous; decryption flags any
    # image that still leaves it.
    p.add_argument("--margin", type=float, default=8.0, help="output_bound = margin x largest |logit| on train")
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--twin", action="store_true", help="also train the ReLU/max-pool twin as the reference")
    p.add_argument("--channels", default="8,16,16", help="maps at the three levels")
    p.add_argument("--double", action="store_true", help="two convolutions per block (depth 23 for 3 levels)")
    args = p.parse_args()
    args.channels = tuple(int(c) for c in args.channels.split(","))
    torch.set_num_threads(args.threads)
    torch.use_deterministic_algorithms(True)

    sets, hashes = load(args.data)
    flat = sets["train"][0].reshape(-1, 3).astype(np.float64) / 255.0
    mean = [round(float(v), 4) for v in flat.mean(0)]
    std = [round(float(v), 4) for v in flat.std(0)]
    xs = {s: tensors(*sets[s], mean, std) for s in sets}

    started = time.time()
    model = train(args, False, sets, mean, std)
    quad = {s: scores(predict(model, xs[s][0]).numpy(), sets[s][1]) for s in ("test", "ph2")}
    print("quadratic:", json.dumps(quad), flush=True)
    twin = None
    if args.twin:
        relu_model = train(args, True, sets, mean, std)
        twin = {s: scores(predict(relu_model, xs[s][0]).numpy(), sets[s][1]) for s in ("test", "ph2")}
        print("relu twin:", json.dumps(twin), flush=True)

    largest, lo, hi = ranges(model, xs["train"][0])
    test_largest, test_lo, test_hi = ranges(model, xs["test"][0])
    output_bound = round(args.margin * max(abs(lo), abs(hi)), 1)
    folded = Folded(model)
    out_dir = os.path.join(args.out, NAME)
    os.makedirs(out_dir, exist_ok=True)
    path = os.path.join(out_dir, "model.onnx")
    torch.onnx.export(folded, torch.zeros(1, 3, 64, 64), path, dynamo=False, opset_version=OPSET,
                      input_names=["input"], output_names=["logits"],
                      dynamic_axes={"input": {0: "batch"}, "logits": {0: "batch"}})
    onnx.checker.check_model(onnx.load(path))
    sess = ort.InferenceSession(path, providers=["CPUExecutionProvider"])
    ort_test = np.concatenate([sess.run(None, {"input": xs["test"][0][i : i + 64].numpy()})[0]
                               for i in range(0, len(xs["test"][0]), 64)])
    torch_test = predict(model, xs["test"][0]).numpy()
    onnx_scores = scores(ort_test, sets["test"][1])
    blocks = [f"block{k}" for k in range(len(model.blocks()))]
    manifest = {
        "name": NAME,
        "version": 1,
        "description": describe(args.channels, args.double),
        "input": {"shape": [3, 64, 64], "layout": "CHW", "channel_order": "RGB"},
        "preprocessing": {
            "resize": "stretch to the input height and width (aspect ratio not kept), bicubic (Catmull-Rom) filter",
            "scale": "pixel / 255",
            "mean": mean,
            "std": std,
        },
        "classes": ["lesion"],
        "positive_class": None,
        "multiplicative_depth": model.depth(),
        "task": {"kind": "segmentation", "threshold": 0.5},
        "dataset": "lesion-seg",
        "output_bound": output_bound,
        "activations": [{"block": b, "a": float(blk.act.a), "b": float(blk.act.b)}
                        for b, blk in zip(blocks, model.blocks())],
        "metrics": {
            "threshold": 0.5,
            "ham_test": quad["test"],
            "ph2": quad["ph2"],
            "ham_test_onnxruntime": onnx_scores,
            "relu_maxpool_twin": twin,
            "ranges": {
                "train": {"output": [lo, hi], "max_abs_pre_activation": dict(zip(blocks, largest))},
                "test": {"output": [test_lo, test_hi], "max_abs_pre_activation": dict(zip(blocks, test_largest))},
                "margin": args.margin,
            },
            "onnxruntime_max_abs_diff": float(np.abs(ort_test - torch_test).max()),
        },
        "training": {
            "command": "python3 models/train/train_unet.py " + " ".join(sys.argv[1:]),
            "script": "models/train/train_unet.py",
            "epochs": args.epochs, "batch": args.batch, "lr": args.lr, "seed": args.seed,
            "loss": "BCE with logits + soft Dice + penalty x mean(relu(|pre-activation| - bound)^2)",
            "bound": args.bound, "penalty": args.penalty,
            "augmentation": "random horizontal/vertical flips and 90-degree turns",
            "parameters": sum(p.numel() for p in folded.parameters()),
            "seconds": round(time.time() - started),
            "framework": f"torch {torch.__version__}, onnx {onnx.__version__}, onnxruntime {ort.__version__}",
            "opset": OPSET,
            "data": hashes,
        },
    }
    write_manifest(out_dir, manifest)
    print(f"wrote {out_dir}: HAM test Dice {quad['test']['dice']:.4f}, PH2 {quad['ph2']['dice']:.4f}, "
          f"output_bound {output_bound}")


if __name__ == "__main__":
    main()
