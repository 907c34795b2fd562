"""facekit.recognition: SFace (OpenCV and the PyTorch port), identity loss, dlib, metrics."""

import cv2
import numpy as np
import pytest
import torch

from facekit import recognition as R
from facekit.errors import FacekitError
from facekit.faces import TEMPLATE_112, FaceDetector, align_face, template
from facekit.imageio import read_image


@pytest.fixture(scope="module", autouse=True)
def _threads():
    torch.set_num_threads(1)
    cv2.setNumThreads(1)


@pytest.fixture(scope="module")
def orl():
    from facekit.data import load_faces

    return load_faces("orl", size=64, align="landmarks", progress=False)


@pytest.fixture(scope="module")
def photos_and_landmarks():
    """Twelve ORL photos (4 people x 3), tinted so channel order matters, padded so the ArcFace crop
    stays inside the image, with YuNet landmarks."""
    from facekit.data import orl_dir

    det = FaceDetector()
    rng = np.random.default_rng(0)
    out = []
    for person in (1, 2, 3, 4):
        for k in (1, 4, 8):
            img = read_image(orl_dir() / f"s{person}" / f"{k}.pgm").astype(np.float32)
            tint = rng.uniform(0.5, 1.0, size=3).astype(np.float32)
            img = np.clip(img * tint + rng.uniform(0, 40, size=3), 0, 255).astype(np.uint8)
            img = cv2.copyMakeBorder(img, 40, 40, 40, 40, cv2.BORDER_REPLICATE)
            d = det.detect(img)
            assert d, "YuNet must find the ORL face"
            out.append((img, d[0].landmarks, f"s{person}"))
    return out


def _degrade(crops: np.ndarray, factor: int, noise: float, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    s = crops.shape[1]
    out = []
    for c in crops:
        small = cv2.resize(c, (s // factor, s // factor), interpolation=cv2.INTER_AREA).astype(np.float32)
        small += rng.normal(0, noise, small.shape)
        small = np.clip(small, 0, 255).astype(np.uint8)
        out.append(cv2.resize(small, (s, s), interpolation=cv2.INTER_CUBIC))
    return np.stack(out)


def test_dequantize_blockwise_matches_hand_computation():
    q = np.array([[1, 2, 3, 4, 5]], np.int8)
    scale = np.array([[0.5, 2.0]], np.float32)  # blocks of 3 along axis 1: [1,2,3] and [4,5]
    zp = np.array([[1, -1]], np.int8)
    out = R.dequantize_blockwise(q, scale, zp, axis=1, block_size=3)
    np.testing.assert_allclose(out, [[0.0, 0.5, 1.0, 10.0, 12.0]])
    bias = R.dequantize_blockwise(np.array([2, 4, 6], np.int8), np.array([0.25, 1.0], np.float32),
                                  np.array([0, 0], np.int8), axis=0, block_size=2)
    np.testing.assert_allclose(bias, [0.5, 1.0, 6.0])


def test_arcface_reframe_maps_margin_template_onto_arcface_template():
    for size in (64, 128):
        m = R.arcface_affine(size, 0.15)
        pts = template(size, 0.15) @ m[:, :2].T + m[:, 2]
        np.testing.assert_allclose(pts, TEMPLATE_112, atol=1e-4)
    with pytest.raises(FacekitError, match="square"):
        R.to_arcface_112(np.zeros((1, 64, 60, 3), np.uint8))


def test_opencv_align_crop_agrees_with_align_face(photos_and_landmarks):
    cv = R.SFaceCV()
    diffs = [np.abs(cv.align_crop(img, lm).astype(int) - align_face(img, lm, 112, 0.0)).mean()
             for img, lm, _ in photos_and_landmarks]
    assert max(diffs) < 1.0, diffs


def test_torch_sface_matches_opencv(photos_and_landmarks):
    cv = R.SFaceCV()
    aligned = np.stack([cv.align_crop(img, lm) for img, lm, _ in photos_and_landmarks])
    e_cv = cv.embed(aligned)
    net = R.SFaceTorch("cpu")
    e_t = net.embed(aligned)
    assert e_cv.shape == e_t.shape == (len(aligned), 128)
    np.testing.assert_allclose(np.linalg.norm(e_cv, axis=1), 1.0, atol=1e-5)
    assert np.abs(e_cv - e_t).max() < 1e-3
    # the port takes RGB; feeding BGR must change the result (the tinted faces make channels differ)
    assert np.abs(e_cv - net.embed(aligned[..., ::-1].copy())).max() > 1e-2
    assert not any(p.requires_grad for p in net.parameters())
    net.train()
    assert not net.training


def test_torch_and_numpy_reframing_agree(orl):
    crops = orl.images[:8]
    np_arc = R.to_arcface_112(crops).astype(np.float32)
    x = torch.from_numpy(crops).permute(0, 3, 1, 2).float() / 255.0
    t_arc = (R.to_arcface_112_torch(x) * 255.0).permute(0, 2, 3, 1).numpy()
    assert np.abs(np_arc - t_arc).mean() < 0.5


def test_identity_similarity_self_and_other_person(orl):
    a = orl.images[orl.identity == "s1"][:3]
    b = orl.images[orl.identity == "s2"][:3]
    same = R.identity_similarity(a, a)
    np.testing.assert_allclose(same, 1.0, atol=1e-5)
    other = R.identity_similarity(a, b)
    assert other.max() < 0.5
    # same person, different photo: clearly above a different person
    assert R.identity_similarity(a[:2], a[1:3]).min() > other.max() + 0.2
    t = torch.from_numpy(a).permute(0, 3, 1, 2).float() / 255.0
    np.testing.assert_allclose(R.identity_similarity(t, t, backend="sface-torch"), 1.0, atol=1e-5)


def test_identity_loss_orders_degraded_copy_below_other_person(orl):
    loss = R.IdentityLoss("cpu")
    a = orl.images[orl.identity == "s5"][:4]
    b = orl.images[orl.identity == "s6"][:4]
    to_t = lambda x: torch.from_numpy(x).permute(0, 3, 1, 2).float() / 255.0
    gt = to_t(a)
    mild = to_t(_degrade(a, 2, 2.0))
    blurred = to_t(np.stack([cv2.GaussianBlur(c, (5, 5), 1.0) for c in a]))
    out = mild.clone().requires_grad_(True)
    l_mild = loss(out, gt)
    with torch.no_grad():
        l_blur, l_other = loss(blurred, gt), loss(to_t(b), gt)
    assert float(loss(gt, gt)) < 1e-5
    assert l_mild.item() < l_other.item() - 0.3 and float(l_blur) < float(l_other) - 0.3
    l_mild.backward()
    assert out.grad is not None and out.grad.abs().sum() > 0


def test_contrastive_identity_loss_charges_for_looking_like_the_others(orl):
    to_t = lambda x: torch.from_numpy(x).permute(0, 3, 1, 2).float() / 255.0
    people = [orl.images[orl.identity == f"s{k}"] for k in (7, 8, 9, 10)]
    gt = to_t(np.stack([p[0] for p in people]))
    same = to_t(np.stack([p[1] for p in people]))  # another photo of each person
    swapped = same[[1, 0, 3, 2]]  # each output shows somebody else of the batch
    cos, con = R.IdentityLoss("cpu"), R.IdentityLoss("cpu", mode="contrastive", temperature=0.1)
    with torch.no_grad():
        assert float(con(gt, gt)) < 0.01  # own face: ~0 even with the InfoNCE term
        l_same, l_swap = con(same, gt), con(swapped, gt)
        assert float(l_same) < float(l_swap) - 1.0
        # the InfoNCE term is what it adds on top of the cosine term, and it is positive
        assert float(l_same) > float(cos(same, gt))
        # an output that looks like everyone (the batch's average face) costs more than under cosine
        blend = gt.mean(0, keepdim=True).expand_as(gt).contiguous()
        assert float(con(blend, gt)) - float(cos(blend, gt)) > 0.5
    with pytest.raises(FacekitError, match="mode"):
        R.IdentityLoss("cpu", mode="triplet")
    with pytest.raises(FacekitError, match="2 faces"):
        con(gt[:1], gt[:1])


def test_rank1_clean_high_and_drops_for_heavy_degradation(orl):
    # 20 of the 40 people keep the test quick; images 1-5 of each are the gallery, 6-10 the probes
    num = np.array([int(p.replace("\\", "/").split("/")[-1].split(".")[0]) for p in orl.paths])
    people = np.array([int(i[1:]) <= 20 for i in orl.identity])
    g, p = people & (num <= 5), people & (num > 5)
    e_g = R.embed(orl.images[g])
    r_clean = R.rank1(R.embed(orl.images[p]), orl.identity[p], e_g, orl.identity[g])
    r_bad = R.rank1(R.embed(_degrade(orl.images[p], 8, 12.0)), orl.identity[p], e_g, orl.identity[g])
    assert r_clean >= 0.95
    assert r_bad < r_clean - 0.2


def test_tar_at_far_on_hand_made_scores():
    imp = np.arange(100) / 100.0  # 0.00 .. 0.99
    gen = np.array([0.5, 0.985, 0.99, 1.0])
    # FAR 1%: one impostor (0.99) may pass -> threshold 0.99 -> genuine 0.99 and 1.0 accepted
    assert R.threshold_at_far(imp, 0.01) == pytest.approx(0.99)
    assert R.tar_at_far(gen, imp, 0.01) == pytest.approx(0.5)
    # FAR 0.1% with 100 impostors: none may pass -> only 1.0 accepted
    assert R.tar_at_far(gen, imp, 0.001) == pytest.approx(0.25)
    # ties: two impostors at the cut cannot both pass at 1%
    tied = np.concatenate([np.zeros(98), [0.9, 0.9]])
    assert R.threshold_at_far(tied, 0.01) > 0.9
    with pytest.raises(FacekitError):
        R.tar_at_far([], imp)


def test_pair_scores_counts():
    e = np.eye(4, dtype=np.float32)
    gen, imp = R.pair_scores(e, ["a", "a", "b", "b"])
    assert len(gen) == 2 and len(imp) == 4


def test_detectability_finds_faces_not_blank_images(orl):
    faces = orl.images[::40][:10]
    assert R.detectability(faces).mean() >= 0.9
    blank = np.full((4, 16, 16, 3), 128, np.uint8)
    assert not R.detectability(blank).any()
    mixed = np.concatenate([faces[:2], np.full((2, 64, 64, 3), 128, np.uint8)])
    assert R.detectability_rate(mixed) == pytest.approx(0.5)


def test_evaluate_scorers_use_recognition(orl):
    from facekit.evaluate import Scorers

    sc = Scorers(lpips=False, identity=True, identity_nets=("sface",))
    assert sc.recognition is R and "id_sface" not in sc.missing
    x = torch.from_numpy(orl.images[:2]).permute(0, 3, 1, 2).float() / 255.0
    assert sc.detect(x).tolist() == [True, True]
    e = sc.embed(x)
    assert e.shape == (2, 128) and 0.4 < float(e[0] @ e[1]) < 0.999  # two photos of s1


@pytest.mark.skipif(not R.dlib_available(), reason="dlib-bin / face-recognition-models not installed")
def test_dlib_descriptor_separates_people(orl):
    d = R.DlibDescriptor()
    a = orl.images[orl.identity == "s1"][:3]
    b = orl.images[orl.identity == "s2"][:3]
    ea, eb = d.embed(a), d.embed(b)
    assert ea.shape == (3, 128)
    same = np.linalg.norm(ea[0] - ea[1:], axis=1)
    other = np.linalg.norm(ea[:, None] - eb[None], axis=2)
    assert same.max() < R.DLIB_SAME_PERSON_DISTANCE < other.min()
    np.testing.assert_allclose(R.identity_similarity(a, a, net="dlib"), 1.0, atol=1e-5)


def test_track_template_is_nearer_the_person_than_its_fused_face_alone():
    from facekit.recognition import l2_normalize, track_template

    rng = np.random.default_rng(4)
    people = l2_normalize(rng.normal(size=(200, 128)))
    gain = []
    for t in people:
        fused = t + rng.normal(scale=0.08, size=128)  # each view errs independently, in all directions
        frames = t + rng.normal(scale=0.12, size=(8, 128))
        tpl = track_template(fused, frames)
        assert tpl.dtype == np.float32 and abs(float(np.linalg.norm(tpl)) - 1.0) < 1e-5
        gain.append(float(tpl @ t) - float(l2_normalize(fused[None])[0] @ t))
    assert np.mean(gain) > 0.05 and np.mean(np.array(gain) > 0) > 0.95, np.mean(gain)
    # no frames: the fused face's own (normalised) embedding, and k copies of it change nothing
    f = rng.normal(size=128)
    assert np.allclose(track_template(f, np.zeros((0, 128))), f / np.linalg.norm(f), atol=1e-6)
    assert np.allclose(track_template(f, np.repeat(f[None] * 3.0, 5, axis=0)), f / np.linalg.norm(f), atol=1e-6)
