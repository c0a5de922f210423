"""Acceptance test: no BLT prediction sees the future, whatever the patcher.

The prediction made at input position p (for the id at p+1) may depend on ids[:p+1] only. For
every patcher and every byte position j of a short window, the window is copied with byte j
changed, patch boundaries are recomputed from the CHANGED window (`window_starts`: for
entropy patchers the entropy model runs on it again), and the logits (so the log-probs) at
every input position p < j must stay put (fp32, atol 1e-5). Predictions at p >= j must move for
some j, or the check proves nothing. The same check, run on a model whose decoder reads the
target's own patch (patch(p+1) instead of patch(p+1) - 1), must fail. Windows longer than the
model's context (scoring, where every level slides) are checked too.
"""
import pytest
import torch

from blt.models.blt import BLTConfig, ByteLatentTransformer
from blt.models.byte_lm import ByteLM, ByteLMConfig
from blt.models.memory import MemoryConfig
from blt.models.transformer import TransformerConfig
from blt.patching.entropy import online_entropies, online_signal, window_starts
from blt.patching.patchers import (
    BPEPatcher,
    BytePatcher,
    CombinedEntropyPatcher,
    EntropyPatcher,
    EqualInfoPatcher,
    RelativeEntropyPatcher,
    SpacePatcher,
    StaticPatcher,
)
from blt.vocab import BOS_ID, EOS_ID, encode

ATOL = 1e-5


def windows() -> dict[str, torch.Tensor]:
    gen = torch.Generator().manual_seed(0)
    random = torch.cat([torch.tensor([BOS_ID]), torch.randint(0, 256, (32,), generator=gen)])
    text = encode(b"The quick brown fox jumps over it, then the other.")[:37]
    two_docs = torch.cat([encode(b"the end of it")[1:], torch.tensor([EOS_ID]), encode(b"The quick fox, then")])
    return {"random": random[None], "text": text[None], "two_docs": two_docs[None]}


BPE_TOKENS = [bytes([b]) for b in range(256)] + [
    b"th", b"the", b"The", b"he", b"en", b"then", b"qu", b"ick", b"quick", b"ow", b"own", b"br",
    b"ox", b"fox", b"ju", b"mp", b"jumps", b"er", b"ov", b"over", b" t", b" the", b"oth", b"other",
]


def entropy_model() -> ByteLM:
    torch.manual_seed(1)
    em = ByteLM(ByteLMConfig(dim=32, n_layers=1, n_heads=2, context=64))
    em.init_weights()
    return em.eval()


def thresholds(em: ByteLM) -> tuple[float, float, float]:
    """theta, theta_r and a surprisal budget that start a patch at a fair share of the test
    windows' positions."""
    ent = torch.cat([online_entropies(em, w)[0, 2:] for w in windows().values()])
    diffs = torch.cat([online_entropies(em, w)[0].diff()[1:] for w in windows().values()])
    surprisal = torch.cat([online_signal(em, w, "surprisal")[0, 2:] for w in windows().values()])
    return float(ent.quantile(0.6)), float(diffs.quantile(0.6)), 2.5 * float(surprisal.mean())


def make_patcher(name: str, theta: float, theta_r: float, budget: float):
    return {
        "static": lambda: StaticPatcher(3),
        "byte": lambda: BytePatcher(),
        "space": lambda: SpacePatcher(),
        "entropy": lambda: EntropyPatcher(theta),
        "relative": lambda: RelativeEntropyPatcher(theta_r),
        "combined": lambda: CombinedEntropyPatcher(theta, theta_r),
        "bpe": lambda: BPEPatcher(BPE_TOKENS),
        "equal_info": lambda: EqualInfoPatcher(budget),
        "equal_info_max_len": lambda: EqualInfoPatcher(0.8 * budget, max_patch_length=3),
        "entropy_max_len": lambda: EntropyPatcher(theta, max_patch_length=2),
        "space_max_len": lambda: SpacePatcher(max_patch_length=2),
    }[name]()


PATCHERS = ["static", "byte", "space", "entropy", "relative", "combined", "bpe", "entropy_max_len", "space_max_len",
            "equal_info", "equal_info_max_len"]


class TargetPatchBLT(ByteLatentTransformer):
    """Deliberately broken: the prediction at p reads patch(p+1), the target's own patch."""

    def decoder_patches(self, patch):
        last_input_patch = patch[:, -2:-1]  # patch of position T-1: the last one the latent ran
        return torch.minimum(patch[:, 1:], last_input_patch)


def build(cls=ByteLatentTransformer, patcher_name="static", context=64, **options):
    parts = dict(
        encoder=TransformerConfig(dim=32, n_layers=2, n_heads=2, window=8),
        latent=TransformerConfig(dim=32, n_layers=1, n_heads=2),
        decoder=TransformerConfig(dim=32, n_layers=1, n_heads=2, window=8),
    )
    cfg = BLTConfig(
        context=context,
        latent_context=6,  # the latent's patch window is exercised too
        hash_ngram_sizes=[3, 4, 5, 6, 7, 8],
        hash_buckets=61,
        **{**parts, **options},
    )
    torch.manual_seed(0)
    model = cls(cfg)
    model.init_weights()
    em = entropy_model()
    patcher = make_patcher(patcher_name, *thresholds(em))
    model.set_patching(patcher, em if patcher.needs_entropy else None)
    return model.eval()


def perturbations(window: torch.Tensor) -> tuple[torch.Tensor, list[int]]:
    """The window, then one copy per byte position j with byte j changed. (1 + J, T+1)"""
    gen = torch.Generator().manual_seed(2)
    rows, positions = [window[0]], []
    for j in range(window.shape[1]):
        if window[0, j] >= 256:
            continue  # BOS/EOS stay where they are: a document boundary is not a byte
        row = window[0].clone()
        row[j] = (row[j] + torch.randint(1, 256, (1,), generator=gen)) % 256
        rows.append(row)
        positions.append(j)
    return torch.stack(rows), positions


@torch.no_grad()
def leak_check(model: ByteLatentTransformer, window: torch.Tensor) -> dict:
    """Largest logit change before and at/after the changed byte, over every j."""
    batch, positions = perturbations(window)
    starts = window_starts(model, batch)  # recomputed from each changed window
    logits = model(batch[:, :-1], starts)  # (1 + J, T, V)
    early = late = 0.0
    starts_moved = False
    for r, j in enumerate(positions, start=1):
        diff = (logits[r] - logits[0]).abs().amax(-1)  # (T,) per input position
        early = max(early, float(diff[:j].max()) if j > 0 else 0.0)
        late = max(late, float(diff[j:].max()) if j < diff.shape[0] else 0.0)
        starts_moved |= not torch.equal(starts[r], starts[0])
    return {"early": early, "late": late, "starts_moved": starts_moved, "patches": int(starts[0].sum())}


@pytest.mark.parametrize("patcher_name", PATCHERS)
def test_no_prediction_sees_a_later_byte(patcher_name):
    model = build(patcher_name=patcher_name)
    for name, window in windows().items():
        report = leak_check(model, window)
        assert report["early"] <= ATOL, f"{patcher_name} leaks the future on {name}: {report}"
        assert report["late"] > 1e-3, f"changing a byte moved nothing on {name}: {report}"
        # on text the patching is neither one patch nor one per position: boundaries matter
        if name == "text" and patcher_name != "byte":
            assert 3 < report["patches"] < window.shape[1], report
        if model.patcher.needs_entropy or patcher_name == "space":
            assert report["starts_moved"], f"no change moved a boundary on {name}: {report}"


@pytest.mark.parametrize("patcher_name", PATCHERS)
def test_the_check_catches_a_decoder_reading_the_target_patch(patcher_name):
    model = build(TargetPatchBLT, patcher_name)
    for name, window in windows().items():
        report = leak_check(model, window)
        assert report["early"] > 1e-3, f"the broken decoder went unnoticed on {name}: {report}"


@pytest.mark.parametrize("patcher_name", ["static", "space", "entropy", "bpe", "equal_info"])
def test_no_leak_in_windows_longer_than_the_context(patcher_name):
    """Context 12, windows of ~37: byte levels slide, the latent sees patches starting within
    the last 12 bytes (the scoring path), and still nothing later than p reaches p."""
    model = build(patcher_name=patcher_name, context=12)
    for name, window in windows().items():
        report = leak_check(model, window)
        assert report["early"] <= ATOL, f"{patcher_name} leaks the future on {name}: {report}"
        assert report["late"] > 1e-3, f"changing a byte moved nothing on {name}: {report}"


MEMORY_LATENT = TransformerConfig(dim=32, n_layers=2, n_heads=2, memory=MemoryConfig(layers=1, keys=8, heads=2, topk=4,
                                                                                   key_dim=16))


@pytest.mark.parametrize("options", [dict(arch="released"), dict(encoder_cross="every_layer", decoder_cross="every_layer"),
                                     dict(latent=MEMORY_LATENT)], ids=["released", "paper_cross_attention", "memory"])
@pytest.mark.parametrize("patcher_name", ["static", "entropy"])
def test_no_leak_with_architecture_options(options, patcher_name):
    model = build(patcher_name=patcher_name, **options)
    for name, window in windows().items():
        report = leak_check(model, window)
        assert report["early"] <= ATOL, f"{options} leaks the future on {name}: {report}"
        assert report["late"] > 1e-3, f"changing a byte moved nothing on {name}: {report}"
