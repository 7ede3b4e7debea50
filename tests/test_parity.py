"""Golden outputs: the imported research head reproduces the research code's own outputs.

Rule-made research checkpoints (tests/research_rule.py) are written in the released format, imported
with `load_research_checkpoint`, and run on the rule-made 512x512 inputs. The outputs must match the
arrays the research head produced from the same weights and inputs (tests/data/parity/, copied from
the project's reference set; the full-resolution array is kept at every 2nd pixel to stay small).
The full-resolution check is what catches a decoder fed the fusion's f1 before its ReLU
(docs/method.md section 3).
"""

from __future__ import annotations

import json
import math
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from diff2in1.heads import NormalHead
from diff2in1.inference.convert import research_head
from research_rule import DATA, GROUPS, rule_inputs, rule_state_dict, write_checkpoints

MANIFEST = json.loads((DATA / "manifest.json").read_text())
STRIDE = 2  # parity_out_res1_stride2_fp16.npy = research final output [..., ::2, ::2]

# Tolerances of the reference set (float16 storage included).
NORMAL_MAX_ABS = 2e-3
KAPPA_MAX_REL = 3e-3
MEAN_ANGLE_DEG = 0.02


def compare(ours: np.ndarray, golden: np.ndarray) -> dict[str, float]:
    """(1, 4, H, W) [xyz, kappa] arrays -> max |normal diff|, max kappa relative diff, mean angle (deg)."""
    a, b = ours.astype(np.float64), golden.astype(np.float64)
    normal_max_abs = float(np.abs(a[:, :3] - b[:, :3]).max())
    kappa_max_rel = float((np.abs(a[:, 3] - b[:, 3]) / np.abs(b[:, 3])).max())
    cos = (a[:, :3] * b[:, :3]).sum(1) / (np.linalg.norm(a[:, :3], axis=1) * np.linalg.norm(b[:, :3], axis=1))
    mean_angle = float(np.degrees(np.arccos(np.clip(cos, -1.0, 1.0))).mean())
    return {"normal_max_abs": normal_max_abs, "kappa_max_rel": kappa_max_rel, "mean_angle_deg": mean_angle}


def assert_within_tolerance(diffs: dict[str, float], what: str) -> None:
    assert diffs["normal_max_abs"] <= NORMAL_MAX_ABS, (what, diffs)
    assert diffs["kappa_max_rel"] <= KAPPA_MAX_REL, (what, diffs)
    assert diffs["mean_angle_deg"] <= MEAN_ANGLE_DEG, (what, diffs)


@pytest.fixture(scope="module")
def inputs() -> dict[str, np.ndarray]:
    return rule_inputs(MANIFEST["input_shapes"])


@pytest.fixture(scope="module")
def run(tmp_path_factory, inputs):
    """Convert the rule-made research files as `convert-research` does (import, record the research
    resolution, save as a pipeline component, load back) and run the head once; keep the fusion
    outputs too."""
    folder = tmp_path_factory.mktemp("research_ckpt")
    fusion_path, decoder_path = write_checkpoints(folder)
    research_head(fusion_path, decoder_path).save_pretrained(folder / "head")
    head = NormalHead.from_pretrained(folder / "head")
    assert not head.training and head.config.processing_resolution == 512
    fused: list[tuple[torch.Tensor, ...]] = []
    handle = head.fusion.register_forward_hook(lambda _m, _i, out: fused.append(out))
    feats = SimpleNamespace(**{g: torch.from_numpy(inputs[g]) for g in GROUPS})
    with torch.no_grad():
        out = head(feats)
    handle.remove()
    final = torch.cat([out.normal, out.kappa], 1).numpy()
    return SimpleNamespace(final=final, coarse=out.coarse.numpy(), fused=fused[0])


def test_inputs_follow_the_rule(inputs):
    """A wrong input rule must fail here, not as a vague output mismatch."""
    for g in GROUPS:
        want = MANIFEST["input_checksums"][g]
        x = inputs[g].astype(np.float64)
        assert inputs[g].shape == tuple(MANIFEST["input_shapes"][g])
        assert x.sum() == pytest.approx(want["sum"], rel=1e-6, abs=1e-6), g
        assert (x**2).sum() == pytest.approx(want["sumsq"], rel=1e-9), g
        assert np.allclose(x.ravel()[:4], want["first4"], rtol=0, atol=1e-7), g


@pytest.mark.parametrize(("part", "module"), [("fusion", "SNmodule"), ("decoder", "Decoder")])
def test_weights_follow_the_rule(part, module):
    state = rule_state_dict(part)
    assert len(state) == {"fusion": 121, "decoder": 60}[part]
    for key, want in MANIFEST["weight_checksums_first_keys"][module].items():
        value = state[key].double()
        assert value.sum().item() == pytest.approx(want["sum"], rel=1e-6, abs=1e-6), key
        assert value.flatten()[0].item() == pytest.approx(want["first"], rel=1e-6), key


def test_fusion_outputs_match_the_research_statistics(run):
    """f4, f3, f2, f1, f0 summary statistics: localises a mismatch before the decoder."""
    names = ("f4", "f3", "f2", "f1", "f0")
    for name, ours, want in zip(names, run.fused, MANIFEST["snmodule_outputs_fp32"], strict=True):
        x = ours.double()
        assert list(x.shape) == want["shape"], name
        assert x.mean().item() == pytest.approx(want["mean"], rel=1e-3, abs=1e-5), name
        assert x.std().item() == pytest.approx(want["std"], rel=1e-3), name
        assert x.abs().max().item() == pytest.approx(want["absmax"], rel=1e-3), name
        assert np.allclose(x.flatten()[:4].numpy(), want["first4"], rtol=1e-3, atol=1e-5), name


def test_coarse_output_matches_golden(run):
    golden = np.load(DATA / "parity_out_res8_fp16.npy")
    assert run.coarse.shape == golden.shape == (1, 4, 64, 64)
    assert_within_tolerance(compare(run.coarse, golden), "1/8 output")


def test_final_output_matches_golden(run):
    golden = np.load(DATA / "parity_out_res1_stride2_fp16.npy")
    assert run.final.shape == (1, 4, 512, 512)
    ours = run.final[:, :, ::STRIDE, ::STRIDE]
    assert ours.shape == golden.shape == (1, 4, 256, 256)
    assert_within_tolerance(compare(ours, golden), "final output")
    assert math.isclose(float(np.linalg.norm(run.final[:, :3], axis=1).mean()), 1.0, abs_tol=1e-5)
