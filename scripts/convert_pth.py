#!/usr/bin/python3
"""Convert a course checkpoint of the seed's ContextUnet (PyTorch .pth) into a
minisd model file (safetensors with minisd metadata).

The input is what the DeepLearning.AI course saves with
torch.save(nn_model.state_dict(), path); a whole pickled model and a dict
holding the weights under "model", "state_dict", "model_state_dict" or
"nn_model" are accepted too. The output holds float32 tensors (I64 for
BatchNorm's num_batches_tracked) under PyTorch's names, and the metadata
"minisd.arch" = "ContextUnet", "minisd.format" = "1" and "minisd.config" (JSON:
in_channels, n_feat, n_cfeat, height, label_names, background, schedule),
with the sizes read off the weight shapes. minisd.load_model(path) (Lua) or
`lua sample.lua --model path` then use it directly.

Needs PyTorch: run it with Debian's /usr/bin/python3.
"""
import argparse
import io
import json
import math
import os
import pickle
import struct
import sys
import tempfile

DEFAULT_LABELS = ["hero", "non-hero", "food", "spell", "side-facing"]
SCHEDULE = {"num_train_timesteps": 500, "beta_start": 1e-4, "beta_end": 0.02,
            "beta_schedule": "linear"}
SHORTCUT = ("init_conv.shortcut.weight", "init_conv.shortcut.bias")

SHORTCUT_HELP = """\
init_conv shortcut: the seed's ResidualConvBlock adds a residual to init_conv
through a 1x1 conv that it builds anew, with fresh random weights, on every
forward call (nn.Conv2d(in, out, 1) inside forward); the checkpoint therefore
holds no weights for it and the trained network never saw one fixed shortcut.
minisd registers the shortcut once (init_conv.shortcut.weight/.bias), so the
converter must add it:
  --shortcut zero    (default) weight = 0, bias = 0. PyTorch's random init of
                     that conv is uniform and symmetric around 0, so a zero
                     shortcut is the expected value of what the trained
                     layers received: init_conv's output is x2 / 1.414 with the
                     skip dropped, deterministic and the best single stand-in
                     for the seed's randomly redrawn skip.
  --shortcut random  one draw of PyTorch's default Conv2d init (uniform in
                     +-1/sqrt(in_channels)), seeded with --seed: the
                     behaviour of one particular call of the seed's forward.
A checkpoint that already holds init_conv.shortcut.* keeps it."""


def fail(msg):
    sys.stderr.write("convert_pth: " + msg + "\n")
    sys.exit(1)


def import_torch():
    try:
        import torch
    except ImportError:
        fail("PyTorch is not importable by %s; run this script with Debian's /usr/bin/python3 "
             "(python3-torch)" % sys.executable)
    return torch


def define_seed_classes(torch):
    """The seed's module classes, so that a whole pickled model can be loaded
    (the course defines them in __main__ or in diffusion_utilities). Only
    their attributes matter when unpickling; forward is never called."""
    nn = torch.nn

    class ResidualConvBlock(nn.Module):
        pass

    class UnetUp(nn.Module):
        pass

    class UnetDown(nn.Module):
        pass

    class EmbedFC(nn.Module):
        pass

    class ContextUnet(nn.Module):
        pass

    return {c.__name__: c for c in (ResidualConvBlock, UnetUp, UnetDown, EmbedFC, ContextUnet)}


def torch_load(torch, path, classes):
    """torch.load on the CPU, with the seed's class names, from whatever module
    they were pickled in, mapped to stand-ins when that module is not
    importable here. (torch 1.13 ignores a pickle_module argument unless
    weights_only is set, so pickle.Unpickler is swapped for the call.)"""
    base = pickle.Unpickler

    class Unpickler(base):
        def find_class(self, module, name):
            if name in classes:
                try:
                    return super().find_class(module, name)
                except (ImportError, AttributeError):
                    return classes[name]
            return super().find_class(module, name)

    pickle.Unpickler = Unpickler
    try:
        return torch.load(path, map_location="cpu")
    finally:
        pickle.Unpickler = base


def extract_state_dict(torch, obj, path):
    """The tensors name -> tensor of a checkpoint object."""
    if isinstance(obj, torch.nn.Module):
        obj = obj.state_dict()
    if isinstance(obj, dict):
        for key in ("model", "state_dict", "model_state_dict", "nn_model"):
            if key in obj and not torch.is_tensor(obj[key]):
                return extract_state_dict(torch, obj[key], path)
        sd = {k: v for k, v in obj.items() if torch.is_tensor(v)}
        if not sd:
            fail("%s: a dict without tensors (keys: %s); expected a ContextUnet state_dict"
                 % (path, ", ".join(sorted(map(str, obj))[:20]) or "none"))
        if all(k.startswith("module.") for k in sd):  # saved from nn.DataParallel
            sd = {k[len("module."):]: v for k, v in sd.items()}
        return sd
    fail("%s holds a %s, not a state_dict or a model" % (path, type(obj).__name__))


def expected_shapes(c, n, k, h):
    """name -> shape of the seed's ContextUnet(c, n_feat=n, n_cfeat=k, height=h)
    state_dict, in PyTorch's order (without the init_conv shortcut)."""
    out = []

    def conv(prefix, cin, cout, ks):
        out.append((prefix + ".weight", [cout, cin, ks, ks]))
        out.append((prefix + ".bias", [cout]))

    def convt(prefix, cin, cout, ks):
        out.append((prefix + ".weight", [cin, cout, ks, ks]))
        out.append((prefix + ".bias", [cout]))

    def bn(prefix, ch):
        for s in ("weight", "bias", "running_mean", "running_var"):
            out.append(("%s.%s" % (prefix, s), [ch]))
        out.append((prefix + ".num_batches_tracked", []))

    def gn(prefix, ch):
        out.append((prefix + ".weight", [ch]))
        out.append((prefix + ".bias", [ch]))

    def rcb(prefix, cin, cout):
        conv(prefix + ".conv1.0", cin, cout, 3)
        bn(prefix + ".conv1.1", cout)
        conv(prefix + ".conv2.0", cout, cout, 3)
        bn(prefix + ".conv2.1", cout)

    def linear(prefix, cin, cout):
        out.append((prefix + ".weight", [cout, cin]))
        out.append((prefix + ".bias", [cout]))

    def embed(prefix, cin, emb):
        linear(prefix + ".model.0", cin, emb)
        linear(prefix + ".model.2", emb, emb)

    rcb("init_conv", c, n)
    rcb("down1.model.0", n, n)
    rcb("down1.model.1", n, n)
    rcb("down2.model.0", n, 2 * n)
    rcb("down2.model.1", 2 * n, 2 * n)
    embed("timeembed1", 1, 2 * n)
    embed("timeembed2", 1, n)
    embed("contextembed1", k, 2 * n)
    embed("contextembed2", k, n)
    convt("up0.0", 2 * n, 2 * n, h // 4)
    gn("up0.1", 2 * n)
    for name, cin in (("up1", 4 * n), ("up2", 2 * n)):
        convt(name + ".model.0", cin, n, 2)
        rcb(name + ".model.1", n, n)
        rcb(name + ".model.2", n, n)
    conv("out.0", 2 * n, n, 3)
    gn("out.1", n)
    conv("out.3", n, c, 3)
    return out


def infer_config(sd, path):
    need = ["init_conv.conv1.0.weight", "contextembed1.model.0.weight", "up0.0.weight"]
    missing = [k for k in need if k not in sd]
    if missing:
        some = ", ".join(sorted(sd)[:8]) + (", ..." if len(sd) > 8 else "")
        fail("%s is not a ContextUnet state_dict: missing %s (it holds %d tensors: %s)"
             % (path, ", ".join(missing), len(sd), some))
    w, cw, uw = sd[need[0]], sd[need[1]], sd[need[2]]
    if w.dim() != 4 or cw.dim() != 2 or uw.dim() != 4:
        fail("%s: %s %s, %s %s, %s %s: not the shapes of a ContextUnet"
             % (path, need[0], list(w.shape), need[1], list(cw.shape), need[2], list(uw.shape)))
    return int(w.shape[1]), int(w.shape[0]), int(cw.shape[1]), 4 * int(uw.shape[2])


def check_state_dict(sd, shapes, path):
    """Lists every missing, unexpected and mis-shaped key in one error."""
    names = {k for k, _ in shapes}
    missing = [k for k, _ in shapes if k not in sd]
    unexpected = sorted(k for k in sd if k not in names and k not in SHORTCUT)
    bad = ["%s %s (expected %s)" % (k, list(sd[k].shape), s)
           for k, s in shapes if k in sd and list(sd[k].shape) != s]
    problems = []
    if missing:
        problems.append("missing keys: " + ", ".join(missing))
    if unexpected:
        problems.append("unexpected keys: " + ", ".join(unexpected))
    if bad:
        problems.append("mis-shaped keys: " + ", ".join(bad))
    if problems:
        fail("%s is not a ContextUnet state_dict: %s" % (path, "; ".join(problems)))


def make_shortcut(torch, sd, c, n, mode, seed):
    """Adds init_conv.shortcut.{weight,bias} (see SHORTCUT_HELP); returns a
    sentence saying what was done."""
    if c == n:
        for k in SHORTCUT:
            sd.pop(k, None)
        return "in_channels == n_feat: init_conv uses the identity skip, no shortcut weights"
    have = [k for k in SHORTCUT if k in sd]
    if len(have) == 2:
        for k, s in zip(SHORTCUT, ([n, c, 1, 1], [n])):
            if list(sd[k].shape) != s:
                fail("%s has shape %s, expected %s" % (k, list(sd[k].shape), s))
        return "kept the checkpoint's init_conv.shortcut weights"
    if have:
        lacking = [k for k in SHORTCUT if k not in sd][0]
        fail("the checkpoint has %s but not %s" % (have[0], lacking))
    if mode == "zero":
        sd[SHORTCUT[0]] = torch.zeros(n, c, 1, 1)
        sd[SHORTCUT[1]] = torch.zeros(n)
        return ("added init_conv.shortcut = 0 (weight %dx%dx1x1 and bias %d): the expected value "
                "of the seed's per-call random shortcut" % (n, c, n))
    gen = torch.Generator().manual_seed(seed)
    bound = 1.0 / math.sqrt(c)
    sd[SHORTCUT[0]] = (torch.rand(n, c, 1, 1, generator=gen) * 2 - 1) * bound
    sd[SHORTCUT[1]] = (torch.rand(n, generator=gen) * 2 - 1) * bound
    return ("added a random init_conv.shortcut (uniform in +-%.4g, seed %d), one draw of the "
            "seed's per-call shortcut" % (bound, seed))


def safetensors_bytes(tensors, order, metadata):
    """The safetensors encoding (8-byte little-endian header length, JSON
    header, raw little-endian data): F32, and I64 for num_batches_tracked."""
    import numpy as np
    header, blobs, offset = {}, [], 0
    for name in order:
        t = tensors[name].detach().cpu()
        if name.endswith("num_batches_tracked"):
            arr, dtype = t.long().numpy().astype("<i8"), "I64"
        else:
            arr, dtype = t.float().numpy().astype("<f4"), "F32"
        if dtype == "F32" and not np.all(np.isfinite(arr)):
            fail("%s holds non-finite values" % name)
        data = np.ascontiguousarray(arr).tobytes()
        header[name] = {"dtype": dtype, "shape": list(t.shape),
                        "data_offsets": [offset, offset + len(data)]}
        blobs.append(data)
        offset += len(data)
    header["__metadata__"] = metadata
    h = json.dumps(header, separators=(",", ":")).encode("utf-8")
    h += b" " * ((8 - len(h) % 8) % 8)
    buf = io.BytesIO()
    buf.write(struct.pack("<Q", len(h)))
    buf.write(h)
    for b in blobs:
        buf.write(b)
    return buf.getvalue()


def write_atomic(path, data):
    """Writes data to a temporary file next to path, then renames it over path."""
    folder = os.path.dirname(os.path.abspath(path))
    fd, tmp = tempfile.mkstemp(prefix=".convert_pth.", suffix=".tmp", dir=folder)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def parse_args(argv):
    p = argparse.ArgumentParser(
        prog="convert_pth.py",
        description="Convert a DeepLearning.AI ContextUnet checkpoint (.pth) into a minisd model "
        "file (.safetensors with minisd metadata). Run with /usr/bin/python3 (PyTorch).",
        epilog=SHORTCUT_HELP, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("input", help="the .pth checkpoint (a state_dict, a model, or a dict with "
                   "'model' / 'state_dict')")
    p.add_argument("output", help="the minisd model file to write (.safetensors)")
    p.add_argument("--shortcut", choices=["zero", "random"], default="zero",
                   help="what init_conv.shortcut gets (default: zero; see below)")
    p.add_argument("--seed", type=int, default=0, help="seed of --shortcut random (default 0)")
    p.add_argument("--label-names", default=None,
                   help="comma-separated names of the context features (default: %s, or "
                   "label1.. beyond five)" % ",".join(DEFAULT_LABELS))
    p.add_argument("--background", default=None,
                   help="'#rrggbb' colour stored in the config for 3-channel models "
                   "(default #ffffff; 'none' to omit)")
    p.add_argument("--timesteps", type=int, default=SCHEDULE["num_train_timesteps"],
                   help="number of training timesteps T (default 500)")
    p.add_argument("--beta-start", type=float, default=SCHEDULE["beta_start"],
                   help="beta_1 of the linear schedule (default 1e-4)")
    p.add_argument("--beta-end", type=float, default=SCHEDULE["beta_end"],
                   help="beta_T of the linear schedule (default 0.02)")
    return p.parse_args(argv)


def main(argv=None):
    args = parse_args(argv)
    torch = import_torch()
    if not os.path.isfile(args.input):
        fail("cannot open %s" % args.input)
    classes = define_seed_classes(torch)
    try:
        obj = torch_load(torch, args.input, classes)
    except Exception as e:  # noqa: BLE001 - any unreadable file is reported the same way
        fail("cannot read %s as a PyTorch checkpoint: %s" % (args.input, e))
    sd = extract_state_dict(torch, obj, args.input)
    c, n, k, h = infer_config(sd, args.input)
    if n % 8 != 0 or h % 4 != 0:
        fail("%s: n_feat %d (must be a multiple of 8) / height %d (a multiple of 4) are not a "
             "ContextUnet's" % (args.input, n, h))
    shapes = expected_shapes(c, n, k, h)
    check_state_dict(sd, shapes, args.input)
    sd = dict(sd)
    note = make_shortcut(torch, sd, c, n, args.shortcut, args.seed)

    if args.label_names is not None:
        labels = [s.strip() for s in args.label_names.split(",")]
        if len(labels) != k or not all(labels):
            fail("--label-names gives %d names, the checkpoint has n_cfeat = %d"
                 % (len(labels), k))
    else:
        labels = [DEFAULT_LABELS[i] if i < len(DEFAULT_LABELS) else "label%d" % (i + 1)
                  for i in range(k)]
    config = {"in_channels": c, "n_feat": n, "n_cfeat": k, "height": h, "label_names": labels,
              "schedule": dict(SCHEDULE, num_train_timesteps=args.timesteps,
                               beta_start=args.beta_start, beta_end=args.beta_end)}
    bg = args.background if args.background is not None else ("#ffffff" if c == 3 else "none")
    if bg != "none":
        config["background"] = bg

    # minisd's order: init_conv's parameters, its shortcut, then the rest
    names = [name for name, _ in shapes]
    if SHORTCUT[0] in sd:
        at = names.index("init_conv.conv2.1.num_batches_tracked") + 1
        names[at:at] = list(SHORTCUT)
    meta = {"minisd.arch": "ContextUnet", "minisd.format": "1",
            "minisd.config": json.dumps(config, separators=(",", ":")),
            "minisd.source": "convert_pth.py " + os.path.basename(args.input)
            + " --shortcut " + args.shortcut}
    data = safetensors_bytes(sd, names, meta)
    try:
        write_atomic(args.output, data)
    except OSError as e:
        fail("cannot write %s: %s" % (args.output, e))
    n_params = sum(sd[x].numel() for x in names if "running_" not in x
                   and not x.endswith("num_batches_tracked"))
    print("convert_pth: %s -> %s" % (args.input, args.output))
    print("  ContextUnet in_channels=%d n_feat=%d n_cfeat=%d height=%d, %d tensors, "
          "%d parameters" % (c, n, k, h, len(names), n_params))
    print("  label_names: %s" % ", ".join(labels))
    print("  " + note)
    return 0


if __name__ == "__main__":
    sys.exit(main())
