"""Proof that fid.py's Inception features are pytorch-fid's: the same features on real images through
pytorch-fid's own network, and the same weights as its release file, tensor by tensor (fid.py
--check-inception). Needs the pytorch-fid package, for its architecture only."""
import hashlib
import os
import tempfile
import time

import numpy as np
import torch

from cli import UserError
from data import DEFAULT_SIZE
from features import Inception, load_ref_data, parse_ref, sha256_file


def pytorch_fid_difference(inc, images):
    """Max abs difference between `inc`'s features of uint8 images and pytorch-fid's own InceptionV3([3])
    (pool3), which loads the weights through torch.hub's cache: the TorchScript weights are written there,
    renamed to pytorch-fid's layout, under the file name pytorch-fid asks for, so its own code builds the
    network and preprocesses the images. Equal features prove the weights and preprocessing are pytorch-fid's.
    Needs the pytorch-fid package."""
    pf = _pytorch_fid()
    old_hub = torch.hub.get_dir()
    with tempfile.TemporaryDirectory() as hub:
        os.makedirs(os.path.join(hub, "checkpoints"))
        torch.save(_in_pytorch_fid_layout(inc, pf), os.path.join(hub, "checkpoints", os.path.basename(pf.FID_WEIGHTS_URL)))
        torch.hub.set_dir(hub)
        try:
            net = pf.InceptionV3([3]).eval()  # resize_input and normalize_input: pytorch-fid's defaults
        finally:
            torch.hub.set_dir(old_hub)
    rgb = images.repeat(1, 3, 1, 1) if images.shape[1] == 1 else images  # pytorch-fid reads every image as RGB
    with torch.no_grad():
        theirs = torch.cat([net(rgb[i:i + 50].float() / 255)[0].flatten(1) for i in range(0, len(rgb), 50)])
    ours, _ = inc(images, progress=False)
    return float(np.abs(ours - theirs.numpy()).max())


# pytorch-fid's weights (its FID_WEIGHTS_URL). torch.hub checks only the 8 hex digits in the name; the full
# sha256 is the one torch-fidelity's mirror of the same file and other public pipelines record.
PYTORCH_FID_FILE = "pt_inception-2015-12-05-6726825d.pth"
PYTORCH_FID_SHA256 = "6726825d0af5f729cebd5821db510b11b1cfad8faad88a03f1befd49fb9129b2"
FINGERPRINTED = ("conv.weight", "bn.bias", "bn.running_mean", "bn.running_var")  # what both files hold


def weights_fingerprint(state_dict):
    """sha256 over the FID Inception's weights in pytorch-fid's names: every conv weight and batch-norm
    bias, mean and var, in name order, as little-endian float32. Equal fingerprints = equal weights,
    whatever file format holds them."""
    h = hashlib.sha256()
    for k in sorted(k for k in state_dict if k.endswith(FINGERPRINTED)):
        h.update(k.encode())
        h.update(state_dict[k].detach().float().contiguous().numpy().astype("<f4").tobytes())
    return h.hexdigest()


def _pytorch_fid():
    try:
        import pytorch_fid.inception as pf
    except ImportError:
        raise UserError("the check needs pytorch-fid's architecture: pip install pytorch-fid")
    return pf


def inception_fingerprint(inc):
    """weights_fingerprint of `inc`'s weights, renamed to pytorch-fid's layout (needs pytorch-fid)."""
    return weights_fingerprint(_in_pytorch_fid_layout(inc, _pytorch_fid()))


def compare_with_pytorch_fid_file(inc, pth):
    """`inc`'s weights against pytorch-fid's own weights file (pt_inception-2015-12-05-6726825d.pth, as
    pytorch-fid downloads it): the file's sha256 against the release's, both fingerprints, and the tensors
    that differ. Needs the pytorch-fid package (for its layout)."""
    pf = _pytorch_fid()
    try:
        theirs = torch.load(pth, map_location="cpu", weights_only=True)
    except Exception as e:  # noqa: BLE001 - any unreadable file is the user's input
        raise UserError(f"--pytorch-fid-weights {pth}: not a readable state dict ({str(e).splitlines()[0][:80]})")
    ours = _in_pytorch_fid_layout(inc, pf)
    keys = [k for k in ours if k.endswith(FINGERPRINTED)]
    missing = [k for k in keys if k not in theirs]
    differ = [k for k in keys if k in theirs and (theirs[k].shape != ours[k].shape or
                                                  not torch.equal(theirs[k].float(), ours[k].float()))]
    gammas = [v for k, v in theirs.items() if k.endswith("bn.weight")]  # the TorchScript folds none: must be 1
    file_sha = sha256_file(pth)
    return dict(file_sha256=file_sha, release_hash=file_sha == PYTORCH_FID_SHA256,
                ours=weights_fingerprint(ours), theirs=weights_fingerprint(theirs), tensors=len(keys),
                missing=missing, differ=differ, gammas_one=all(bool((g == 1).all()) for g in gammas))


def _in_pytorch_fid_layout(inc, pf):
    """The TorchScript weights as a state dict of pytorch-fid's FID Inception (its fid_inception_v3 layout)."""
    ts = list(inc.net.state_dict().values())
    fresh = pf._inception_v3(num_classes=1008, aux_logits=False, weights=None)
    for name, blk in (("Mixed_5b", pf.FIDInceptionA(192, 32)), ("Mixed_5c", pf.FIDInceptionA(256, 64)),
                      ("Mixed_5d", pf.FIDInceptionA(288, 64)), ("Mixed_6b", pf.FIDInceptionC(768, 128)),
                      ("Mixed_6c", pf.FIDInceptionC(768, 160)), ("Mixed_6d", pf.FIDInceptionC(768, 160)),
                      ("Mixed_6e", pf.FIDInceptionC(768, 192)), ("Mixed_7b", pf.FIDInceptionE_1(1280)),
                      ("Mixed_7c", pf.FIDInceptionE_2(2048))):
        setattr(fresh, name, blk)
    sd = fresh.state_dict()
    convs = [k[:-len(".conv.weight")] for k in sd if k.endswith(".conv.weight")]
    if len(convs) * 4 != len(ts):
        raise UserError(f"{inc.path} does not have the FID Inception's layers ({len(ts)} tensors for {len(convs)} convs)")
    for i, c in enumerate(convs):  # TorchScript order per conv: weight, beta, mean, var (no gamma)
        w, beta, mean, var = ts[4 * i:4 * i + 4]
        sd[f"{c}.conv.weight"], sd[f"{c}.bn.bias"] = w, beta
        sd[f"{c}.bn.running_mean"], sd[f"{c}.bn.running_var"] = mean, var
        sd[f"{c}.bn.weight"] = torch.ones_like(beta)
    return sd


def check_inception(args, device):
    if not args.ref and not args.pytorch_fid_weights:
        raise UserError("--check-inception needs --ref (features on real images, e.g. --ref mnist:test) "
                        "and/or --pytorch-fid-weights FILE")
    inc = Inception(args.inception, device)
    print(f"weights {inc.path}: file sha256 {inc.sha256}")
    if args.ref:
        name, split = parse_ref(args.ref)
        images = load_ref_data(name, split, args.data_root, args.size or DEFAULT_SIZE.get(name, 32)).images[:args.n]
        t0 = time.time()
        diff = pytorch_fid_difference(inc, images)
        print(f"max |fid.py - pytorch-fid| over {len(images)} {args.ref} images x 2048 features: {diff:.2e} "
              f"({time.time() - t0:.0f} s)")
    if not args.pytorch_fid_weights:
        print(f"weights fingerprint (features.weights_fingerprint): {inception_fingerprint(inc)}; "
              f"to pin it to pytorch-fid's release, add --pytorch-fid-weights {PYTORCH_FID_FILE}")
        return
    r = compare_with_pytorch_fid_file(inc, args.pytorch_fid_weights)
    print(f"{args.pytorch_fid_weights}: file sha256 {r['file_sha256']} "
          f"({'=' if r['release_hash'] else 'is NOT'} pytorch-fid's release file {PYTORCH_FID_FILE})")
    print(f"weights fingerprint over {r['tensors']} tensors: ours {r['ours']}, theirs {r['theirs']}")
    if r["missing"] or r["differ"] or not r["gammas_one"]:
        bad = r["missing"] + r["differ"]
        print(f"NOT the same weights: {len(r['missing'])} tensors missing, {len(r['differ'])} differ"
              + (f" (first: {bad[0]})" if bad else "") + ("" if r["gammas_one"] else "; batch-norm scales != 1"))
        raise SystemExit(1)
    print("identical: every convolution and batch-norm tensor equals the file's" +
          ("; the file is pytorch-fid's release" if r["release_hash"] else "; the file itself is not pytorch-fid's release"))
