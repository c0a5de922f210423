"""BLT generation: the incremental path against the slow path and one full forward pass, for
every patcher; online patch boundaries, batching, sampling, stops and streaming, sliding."""
import pytest
import torch

import blt.inference.blt as bg
import blt.inference.rows as rows
from blt.errors import UserError
from blt.inference.args import GenerationArgs as Args
from blt.inference.blt import generate_blt
from blt.inference.sampling import sample_next
from blt.inference.slow import generate_slow
from blt.models.blt import BLTConfig, ByteLatentTransformer
from blt.models.byte_lm import ByteLM, ByteLMConfig
from blt.models.memory import MemoryConfig
from blt.models.transformer import TransformerConfig
from blt.patching.entropy import online_entropies, online_signal, window_starts
from blt.patching.patchers import (
    BPEPatcher, CombinedEntropyPatcher, EntropyPatcher, EqualInfoPatcher, RelativeEntropyPatcher, SpacePatcher,
    StaticPatcher,
)
from blt.vocab import EOS_ID, encode

TEXT = b"First Citizen:\nBefore we proceed any further, hear me speak.\nAll: Speak, speak.\n"
PROMPT = b"Citizen: we are accounted poor citizens, the patricians good. What authority surfeits on"
N_NEW = 256


def tiny_blt(context=352, latent_context=24, seed=0, windows=True, **options) -> ByteLatentTransformer:
    """Short sliding windows everywhere (the caches wrap), 2 hash functions, GQA in the latent;
    `options`: BLTConfig's architecture options."""
    torch.manual_seed(seed)
    parts = dict(
        encoder=TransformerConfig(dim=32, n_layers=2, n_heads=2, window=8 if windows else None),
        latent=TransformerConfig(dim=48, n_layers=2, n_heads=4, n_kv_heads=2),
        decoder=TransformerConfig(dim=32, n_layers=2, n_heads=2, window=12 if windows else None),
    )
    cfg = BLTConfig(context=context, latent_context=latent_context, hash_ngram_sizes=[3, 4, 5], n_hash_functions=2,
                    hash_buckets=97, **{**parts, **options})
    model = ByteLatentTransformer(cfg)
    model.init_weights()
    with torch.no_grad():  # at init the latent barely moves predictions; make patching matter
        for cross in model.decoder.crosses:
            cross.wo.weight.mul_(8)
        model.decoder.head.weight[EOS_ID] = 0  # logit 0 is never the max: no early EOS in greedy runs
    window = 16 if windows else None
    entropy_model = ByteLM(ByteLMConfig(dim=32, n_layers=2, n_heads=2, window=window, context=context,
                                        vocab=cfg.vocab))
    entropy_model.init_weights()
    with torch.no_grad():  # spread the random entropies, so no threshold sits within rounding of one
        entropy_model.head.weight.mul_(8)
    model.entropy_model = entropy_model.eval()
    return model.eval()


def thresholds(model) -> tuple[float, float]:
    """theta and theta_r between the middle entropies (differences) of real text: varied patches."""
    with torch.no_grad():
        h = online_entropies(model.entropy_model, encode(TEXT)[None])[0, 2:]
    mid = lambda x: float(x.sort().values[len(x) // 2 - 1 : len(x) // 2 + 1].mean())  # noqa: E731
    return mid(h), mid(h[1:] - h[:-1])


def surprisal_budget(model) -> float:
    """About three bytes' worth of the entropy model's surprisal on real text."""
    with torch.no_grad():
        return 3 * float(online_signal(model.entropy_model, encode(TEXT)[None], "surprisal")[0, 2:].mean())


def make_patcher(kind: str, model):
    theta, theta_r = thresholds(model)
    return {
        "static": lambda: StaticPatcher(3),
        "space": lambda: SpacePatcher(max_patch_length=6),
        "entropy": lambda: EntropyPatcher(theta),
        "relative": lambda: RelativeEntropyPatcher(theta_r),
        "entropy_relative": lambda: CombinedEntropyPatcher(theta - 0.1, theta_r),
        "equal_info": lambda: EqualInfoPatcher(surprisal_budget(model), max_patch_length=8),
    }[kind]()


KINDS = ["static", "space", "entropy", "relative", "entropy_relative", "equal_info"]


@pytest.fixture(scope="module")
def model():
    return tiny_blt()


@pytest.fixture
def recorded(monkeypatch):
    """Greedy sampling that keeps its logits, and the incremental states that were built."""
    logits, states = [], []

    def greedy(x, temperature, top_k, top_p, generator):
        logits.append(x.clone())
        return sample_next(x, 0.0)

    class Recorded(bg.IncrementalBLT):
        def __init__(self, *args):
            super().__init__(*args)
            states.append(self)

    monkeypatch.setattr(rows, "sample_next", greedy)
    monkeypatch.setattr(bg, "IncrementalBLT", Recorded)
    return logits, states


@pytest.mark.parametrize("kind", KINDS)
def test_incremental_equals_slow_path_and_one_forward(model, recorded, kind):
    model.set_patching(make_patcher(kind, model), model.entropy_model)
    fast = generate_blt(model, [PROMPT], Args(N_NEW, temperature=0))[0]
    assert len(fast) == N_NEW
    slow = generate_slow(model, [PROMPT], Args(N_NEW, temperature=0))[0]
    assert fast == slow

    # one full forward pass over the final sequence: log-probabilities and patch boundaries
    logits, (state,) = recorded
    seq = encode(PROMPT + fast)[None]  # (1, T+1)
    with torch.no_grad():
        starts = window_starts(model, seq)
        reference = model(seq[:, :-1], starts)[0].log_softmax(-1)  # (T, V)
    assert len(logits) == 2 * N_NEW  # one (1, V) per new byte, the fast path's first
    for online in (torch.cat(logits[:N_NEW]), torch.cat(logits[N_NEW:])):
        assert (online.log_softmax(-1) - reference[len(PROMPT):]).abs().max() < 1e-4
    assert torch.equal(state.starts, starts)
    assert 0.15 < starts.float().mean() < 0.9  # varied patches, neither all starts nor none
    if model.patcher.needs_entropy:  # the patcher's signal online (steps) and offline (one pass)
        offline = online_signal(model.entropy_model, seq, model.patcher.signal)
        assert (state.entropies - offline).abs().max() < 1e-4


ARCHITECTURES = {
    "released": dict(arch="released"),  # 260 ids, oldest-first hashes, 2x + o, no final norms, per-layer decoder
    "paper_encoder": dict(encoder_cross="every_layer", decoder_cross="every_layer"),
    "latent_memory": dict(latent=TransformerConfig(dim=48, n_layers=3, n_heads=4, n_kv_heads=2, memory=MemoryConfig(
        layers=2, keys=8, heads=2, topk=4, key_dim=16))),
}


@pytest.mark.parametrize("name", ARCHITECTURES)
def test_architecture_options_generate_exactly(recorded, name):
    """Every architecture option is honoured by both generation paths and the forward pass."""
    model = tiny_blt(**ARCHITECTURES[name])
    model.set_patching(make_patcher("entropy", model), model.entropy_model)
    fast = generate_blt(model, [PROMPT], Args(96, temperature=0))[0]
    assert fast == generate_slow(model, [PROMPT], Args(96, temperature=0))[0]
    logits, (state,) = recorded
    seq = encode(PROMPT + fast)[None]
    with torch.no_grad():
        starts = window_starts(model, seq)
        reference = model(seq[:, :-1], starts)[0].log_softmax(-1)
    assert (torch.cat(logits[:96]).log_softmax(-1) - reference[len(PROMPT):]).abs().max() < 1e-4
    assert torch.equal(state.starts, starts)


def test_latent_steps_only_for_rows_that_closed_a_patch(model):
    model.set_patching(make_patcher("entropy", model), model.entropy_model)
    seqs = torch.stack([encode(TEXT[:60]), encode(TEXT[10:70]), encode(TEXT[5:65])])  # (3, 61)
    state = bg.IncrementalBLT(model, 3, 60)
    with torch.no_grad():
        online = torch.stack([state.step(seqs[:, p]) for p in range(60)], dim=1)  # (3, 60, V)
        offline = window_starts(model, seqs)
        reference = model(seqs[:, :-1], offline)
    closed = offline[:, 1:].sum(1)  # patches closed by inputs 0..59
    assert torch.equal(state.lat_stack.row_count, closed)
    assert len(set(closed.tolist())) > 1  # the rows stepped the latent different numbers of times
    assert (online.log_softmax(-1) - reference.log_softmax(-1)).abs().max() < 1e-4


def test_bpe_patching_online_equals_offline(model):
    """Calling the patcher's own `starts` makes the causal BPE rule work online too."""
    tokens = [bytes([b]) for b in range(256)] + [b"th", b"the", b"the ", b"ci", b"cit", b"citizen", b" a", b"ea"]
    model.set_patching(BPEPatcher(tokens, max_patch_length=5))
    seq = encode(TEXT[:60])[None]  # (1, 61)
    state = bg.IncrementalBLT(model, 1, 60)
    with torch.no_grad():
        online = torch.cat([state.step(seq[:, p]) for p in range(60)])  # (60, V)
        starts = window_starts(model, seq)
        reference = model(seq[:, :-1], starts)[0]
    assert torch.equal(state.starts, starts) and not bool(starts.all())
    assert (online.log_softmax(-1) - reference.log_softmax(-1)).abs().max() < 1e-4
    fast = generate_blt(model, [PROMPT], Args(24, temperature=0))
    assert fast == generate_slow(model, [PROMPT], Args(24, temperature=0))


def test_unbounded_windows_grow_the_caches():
    """No windows: every cache grows (64 slots, doubling) to the whole sequence, never wraps."""
    model = tiny_blt(latent_context=None, windows=False)
    model.set_patching(make_patcher("entropy", model), model.entropy_model)
    seq = encode((TEXT * 2)[:150])[None]  # (1, 151)
    state = bg.IncrementalBLT(model, 1, 150)
    with torch.no_grad():
        online = torch.cat([state.step(seq[:, p]) for p in range(150)])  # (150, V)
        starts = window_starts(model, seq)
        reference = model(seq[:, :-1], starts)[0]
    assert state.enc_stack.k.shape[3] == 150 and state.enc_stack.cap == 150
    assert (online.log_softmax(-1) - reference.log_softmax(-1)).abs().max() < 1e-4
    assert torch.equal(state.starts, starts)


def test_batched_ragged_equals_one_at_a_time():
    model = tiny_blt(latent_context=None, seed=1)
    model.set_patching(make_patcher("entropy", model), model.entropy_model)
    prompts = [b"O Romeo, Romeo", b"wherefore art thou", b"ay"]  # prefill 3 positions, then step
    batched = generate_blt(model, prompts, Args(48, temperature=0))
    alone = [generate_blt(model, [p], Args(48, temperature=0))[0] for p in prompts]
    assert batched == alone
    assert len(set(batched)) == 3


def test_seeded_sampling_is_reproducible_and_matches_slow_path(model):
    model.set_patching(make_patcher("entropy_relative", model), model.entropy_model)
    kw = dict(max_new_bytes=40, temperature=1.0, top_k=50, top_p=0.95)
    prompts = [PROMPT, b"ay", b""]  # an empty prompt: BOS alone
    a = generate_blt(model, prompts, Args(seed=7, **kw))
    assert a == generate_blt(model, prompts, Args(seed=7, **kw))
    assert a != generate_blt(model, prompts, Args(seed=8, **kw))
    assert a == generate_slow(model, prompts, Args(seed=7, **kw))


def test_stop_strings_and_streaming(model):
    model.set_patching(make_patcher("space", model), model.entropy_model)
    full = generate_blt(model, [PROMPT], Args(64, temperature=0))[0]
    stop = full[30:33]
    chunks = []
    out = generate_blt(model, [PROMPT], Args(64, temperature=0, stop=(stop,)),
                       on_bytes=lambda row, data: chunks.append((row, data)))[0]
    assert out == full[: full.find(stop)]
    assert b"".join(d for _, d in chunks) == out and all(r == 0 for r, _ in chunks)


@pytest.mark.parametrize("latent_context", [4, None])
def test_generation_past_the_context_slides_as_one_long_forward(recorded, latent_context):
    """Beyond the context every level slides (bytes: their windows; latent: patches starting
    within the last `context` bytes, and at most latent_context of them), and the log-probs
    still equal one forward pass over the whole sequence, which applies the same rules."""
    model = tiny_blt(context=24, latent_context=latent_context)
    model.set_patching(make_patcher("entropy", model), model.entropy_model)
    prompt = TEXT[:40]  # longer than the context
    assert [len(o) for o in generate_blt(model, [prompt, b"x"], Args(30, temperature=0))] == [30, 30]
    logits, _ = recorded
    logits.clear()
    (out,) = generate_blt(model, [prompt], Args(30, temperature=0))
    seq = encode(prompt + out)[None]  # (1, 71): nearly three contexts
    with torch.no_grad():
        reference = model(seq[:, :-1], window_starts(model, seq))[0].log_softmax(-1)  # (70, V)
    online = torch.cat(logits)  # (30, V)
    assert (online.log_softmax(-1) - reference[len(prompt):]).abs().max() < 1e-4
    slow = generate_slow(model, [prompt], Args(5, temperature=0))[0]
    assert len(slow) == 5


def test_errors(model):
    bare = tiny_blt()
    with pytest.raises(UserError):
        generate_blt(bare, [b"a"], Args(4))  # no patcher attached
    model.set_patching(StaticPatcher(4))
    with pytest.raises(UserError):
        generate_blt(model, [b"a"], Args(4, temperature=-1))
    assert generate_blt(model, [b"a", b"b"], Args(0)) == [b"", b""]
