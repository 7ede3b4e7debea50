"""Import of the research checkpoints, built from the recorded layout (no real checkpoint needed)."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
import torch

from diff2in1.errors import InputError
from diff2in1.heads import HeadConfig, NormalHead, load_research_checkpoint
from diff2in1.heads.research_import import (
    DECODER_KEY_MAP,
    FUSION_KEY_MAP,
    FUSION_UNUSED_PREFIXES,
    rename_keys,
)

REFERENCE = Path(__file__).resolve().parent / "data" / "parity"  # the research checkpoints' key layouts

# Reference width -> small width, applied to every dimension of every recorded shape. Consistent
# sums (e.g. 2224 = 2048 + 176 -> 48 = 32 + 16) keep the small layout a valid research model.
SMALL = {
    7680: 24, 7040: 20, 4160: 16, 2560: 12,  # tap groups
    2048: 32, 176: 16, 64: 8, 40: 8, 24: 8, 2224: 48, 240: 24, 128: 16, 104: 16,  # fusion
    1024: 32, 512: 16, 256: 16, 1088: 40, 552: 24, 280: 24, 516: 20, 260: 20, 132: 20,  # decoder
    1536: 12, 2352: 12, 37632: 12, 768: 12,  # unused modules
}  # fmt: skip


def layout(part: str) -> dict:
    return json.loads((REFERENCE / f"research_layout_{part}.json").read_text())


def synthetic_state(part: str, small: bool = True, seed: int = 0) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    out = {}
    for entry in layout(part)["keys"]:
        shape = [SMALL.get(d, d) if small else d for d in entry["shape"]]
        if entry["dtype"] == "int64":
            out[entry["key"]] = torch.randint(0, 1000, shape, generator=g)
        else:
            out[entry["key"]] = torch.randn(shape, generator=g, dtype=getattr(torch, entry["dtype"]))
    for k, v in out.items():  # keep variances positive so the imported model runs sensibly
        if "var" in k:
            v.abs_().add_(0.1)
    return out


def save_pair(tmp_path: Path, fusion: dict, decoder: dict) -> tuple[Path, Path]:
    fp, dp = tmp_path / "checkpoint_10.pth", tmp_path / "checkpoint_bae_10.pth"
    torch.save(fusion, fp)
    torch.save(decoder, dp)
    return fp, dp


def mapped(state: dict, key_map, drop=()) -> dict:
    return rename_keys(state, key_map, "test", drop)


def test_reference_head_matches_recorded_layout_on_meta():
    fusion, decoder = layout("fusion"), layout("decoder")
    assert len(fusion["keys"]) == fusion["n_keys"] == 121 and len(decoder["keys"]) == decoder["n_keys"] == 60
    unused = {e["key"] for e in fusion["keys"] if e["key"].startswith(FUSION_UNUSED_PREFIXES)}
    assert unused == set(fusion["unused_param_keys"])
    with torch.device("meta"):
        head = NormalHead.from_head_config(HeadConfig.reference())
    ours = head.state_dict()
    param_names = {n for n, _ in head.named_parameters()}
    research: dict[str, tuple] = {}
    for part, key_map, drop in (
        (fusion, FUSION_KEY_MAP, FUSION_UNUSED_PREFIXES),
        (decoder, DECODER_KEY_MAP, ()),
    ):
        fake = {e["key"]: torch.empty(e["shape"], device="meta") for e in part["keys"]}
        info = {e["key"]: e for e in part["keys"]}
        for old in fake:
            if old.startswith(drop):
                continue
            new = mapped({old: fake[old]}, key_map)
            (name,) = new
            research[name] = (info[old]["shape"], info[old]["dtype"], info[old]["kind"])
    assert set(research) == set(ours)
    for name, (shape, dtype, kind) in research.items():
        assert list(ours[name].shape) == shape, name
        assert str(ours[name].dtype) == f"torch.{dtype}", name
        assert (name in param_names) == (kind == "parameter"), name
    n_fusion = sum(p.numel() for p in head.fusion.parameters())
    n_decoder = sum(p.numel() for p in head.decoder.parameters())
    assert n_fusion == fusion["n_params_total"] - fusion["n_params_without_grad"]
    assert n_decoder == decoder["n_params_total"]


def test_import_small_layout_exactly(tmp_path):
    fusion, decoder = synthetic_state("fusion"), synthetic_state("decoder", seed=1)
    head = load_research_checkpoint(*save_pair(tmp_path, fusion, decoder))
    assert not head.training
    c = head.widths
    assert c.in_channels == (24, 20, 16, 12)
    assert (c.f4, c.f3, c.f2, c.g, c.f1, c.f0) == (32, 16, 8, 8, 8, 8)
    assert c.decoder_widths == (32, 32, 16, 16, 16) and c.refine_hidden == 16
    want = {
        **mapped(fusion, FUSION_KEY_MAP, FUSION_UNUSED_PREFIXES),
        **mapped(decoder, DECODER_KEY_MAP),
    }
    got = head.state_dict()
    assert set(got) == set(want)
    for k, v in want.items():
        assert torch.equal(got[k], v), k
    # spectral buffers come across as they are (sv0 only as a log)
    assert torch.equal(head.fusion.mid_block.conv1.u0, fusion["mid_feature_mix_conv.conv1.u0"])
    with torch.no_grad():
        out = head(
            type("F", (), {
                "low": torch.randn(1, 24, 1, 1), "mid": torch.randn(1, 20, 2, 2),
                "high": torch.randn(1, 16, 4, 4), "highest": torch.randn(1, 12, 8, 8),
            })()
        )  # fmt: skip
    assert out.normal.shape == (1, 3, 64, 64) and bool(torch.isfinite(out.normal).all())


def test_import_full_size_layout(tmp_path):
    """The recorded shapes and dtypes as they are (about 400 MB of random tensors, a few seconds)."""
    fusion, decoder = synthetic_state("fusion", small=False), synthetic_state("decoder", small=False, seed=1)
    head = load_research_checkpoint(*save_pair(tmp_path, fusion, decoder))
    assert head.widths == HeadConfig.reference()
    got = head.state_dict()
    n_used = 0
    for state, key_map, drop in (
        (fusion, FUSION_KEY_MAP, FUSION_UNUSED_PREFIXES),
        (decoder, DECODER_KEY_MAP, ()),
    ):
        for k, v in mapped(state, key_map, drop).items():
            assert torch.equal(got[k], v), k
            n_used += 1
    assert n_used == len(got) == 121 - len(layout("fusion")["unused_param_keys"]) + 60
    assert all(p.requires_grad for p in head.parameters())


def test_module_prefix_is_accepted(tmp_path):
    fusion, decoder = synthetic_state("fusion"), synthetic_state("decoder")
    fusion = {f"module.{k}": v for k, v in fusion.items()}
    head = load_research_checkpoint(*save_pair(tmp_path, fusion, decoder))
    assert torch.equal(head.decoder.d0.bias, decoder["conv2.bias"])


@pytest.mark.parametrize(
    ("part", "edit", "message"),
    [
        (
            "fusion",
            lambda s: s.__setitem__("extra_head.weight", torch.zeros(3)),
            r"unexpected keys.*extra_head",
        ),
        ("decoder", lambda s: s.__setitem__("up5._net.0.weight", torch.zeros(3)), r"unexpected keys.*up5"),
        ("fusion", lambda s: s.pop("high_feature_mix_conv.conv2.u0"), r"missing keys.*high_block\.conv2\.u0"),
        (
            "decoder",
            lambda s: s.__setitem__("out_conv_res2.2.weight", torch.zeros(16, 16, 3)),
            r"shape mismatches.*refine2\.2\.weight",
        ),
        ("fusion", lambda s: s.pop("conv_up2.weight"), r"missing key 'conv_up2\.weight'"),
    ],
)
def test_bad_checkpoints_are_refused_naming_the_file(tmp_path, part, edit, message):
    states = {"fusion": synthetic_state("fusion"), "decoder": synthetic_state("decoder")}
    edit(states[part])
    fp, dp = save_pair(tmp_path, states["fusion"], states["decoder"])
    bad = fp if part == "fusion" else dp
    with pytest.raises(InputError, match=message) as info:
        load_research_checkpoint(fp, dp)
    assert str(bad) in str(info.value)
    assert "\n" not in str(info.value)


def test_swapped_files_are_refused(tmp_path):
    fp, dp = save_pair(tmp_path, synthetic_state("fusion"), synthetic_state("decoder"))
    with pytest.raises(InputError, match="checkpoint_bae_10.pth"):
        load_research_checkpoint(dp, fp)


class _Payload:
    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def test_pickle_that_executes_code_is_refused(tmp_path):
    marker = tmp_path / "pwned"
    evil = tmp_path / "checkpoint_1.pth"
    torch.save({"low_feature_conv.0.weight": _Payload(marker)}, evil)
    assert not marker.exists()
    _, dp = save_pair(tmp_path, {}, synthetic_state("decoder"))
    with pytest.raises(InputError, match="refused") as info:
        load_research_checkpoint(evil, dp)
    assert str(evil) in str(info.value)
    assert not marker.exists()


def test_missing_and_non_state_dict_files(tmp_path):
    with pytest.raises(InputError, match="no such file"):
        load_research_checkpoint(tmp_path / "nope.pth", tmp_path / "nope_bae.pth")
    lst = tmp_path / "list.pth"
    torch.save([torch.zeros(1)], lst)
    with pytest.raises(InputError, match="not a state_dict"):
        load_research_checkpoint(lst, lst)
    junk = tmp_path / "junk.pth"
    junk.write_bytes(b"not a checkpoint")
    with pytest.raises(InputError, match="junk.pth"):
        load_research_checkpoint(junk, junk)
