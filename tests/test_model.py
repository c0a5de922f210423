"""Attention masks, RoPE, grouped-query attention, and the byte LM's causality and scoring."""
import numpy as np
import pytest
import torch
import torch.nn.functional as F

from blt.evaluation.scorer import byte_lm_scores
from blt.models.byte_lm import ByteLM, ByteLMConfig
from blt.models.masks import attention_mask, document_ids
from blt.models.transformer import Attention, Rotary, TransformerConfig, apply_rotary
from blt.vocab import BOS_ID, EOS_ID, encode


def tiny_lm(context=24, window=None, n_layers=2, seed=0) -> ByteLM:
    torch.manual_seed(seed)
    model = ByteLM(ByteLMConfig(dim=32, n_layers=n_layers, n_heads=4, window=window, context=context))
    model.init_weights()
    return model.eval()


def naive_mask(q_pos, k_pos, window, q_doc, k_doc) -> torch.Tensor:
    B, Tq, Tk = q_pos.shape[0], q_pos.shape[1], k_pos.shape[1]
    out = torch.zeros(B, 1, Tq, Tk, dtype=torch.bool)
    for b in range(B):
        for i in range(Tq):
            for j in range(Tk):
                q, k = int(q_pos[b, i]), int(k_pos[b, j])
                if q < 0:
                    ok = True  # padding queries see everything (their output is never used)
                else:
                    ok = 0 <= k <= q and (window is None or q - k < window)
                    if q_doc is not None:
                        ok = ok and int(q_doc[b, i]) == int(k_doc[b, j])
                out[b, 0, i, j] = ok
    return out


@pytest.mark.parametrize("window", [None, 1, 3])
@pytest.mark.parametrize("with_docs", [False, True])
def test_attention_mask_matches_naive_rule(window, with_docs):
    torch.manual_seed(0)
    B, T = 3, 9
    pos = torch.arange(T).repeat(B, 1) - torch.tensor([[0], [2], [4]])  # rows left-padded with negatives
    pos = pos.clamp(min=-1)
    k_pos = torch.cat([pos, torch.full((B, 2), -1)], dim=1)  # extra empty cache slots
    docs = torch.randint(0, 2, (B, T)).cumsum(1) if with_docs else None
    k_docs = torch.cat([docs, torch.zeros(B, 2, dtype=docs.dtype)], 1) if with_docs else None
    got = attention_mask(pos, k_pos, window, docs, k_docs)
    assert torch.equal(got, naive_mask(pos, k_pos, window, docs, k_docs))
    assert not got.all()  # the rule does mask something here


def test_document_ids_and_training_mask_keep_documents_apart():
    ids = torch.tensor([[BOS_ID, 5, 6, EOS_ID, BOS_ID, 7, EOS_ID, BOS_ID, 8]])
    assert document_ids(ids, BOS_ID).tolist() == [[1, 1, 1, 1, 2, 2, 2, 3, 3]]
    model = tiny_lm(context=16, window=5)  # 2 * window > T: the dense mask (blocked: see below)
    mask = model.training_mask(ids)
    pos = torch.arange(ids.shape[1])[None]
    docs = document_ids(ids, BOS_ID)
    assert torch.equal(mask, naive_mask(pos, pos, 5, docs, docs))
    assert tiny_lm(context=16).training_mask(torch.tensor([[BOS_ID, 1, 2, 3]])) is None  # plain causal


def test_rope_preserves_norms_and_depends_only_on_offsets():
    torch.manual_seed(0)
    rot = Rotary(head_dim=16, theta=10000.0)
    rot.init_weights()

    def rotate(x, p):  # x: (16,) at position p
        cos, sin = rot(torch.tensor([[p]]))
        return apply_rotary(x.view(1, 1, 1, 16), cos, sin).view(16)

    q, k = torch.randn(16), torch.randn(16)
    for p in (0, 1, 7, 1000):
        assert torch.allclose(rotate(q, p).norm(), q.norm(), atol=1e-5)
    dot = lambda m, n: torch.dot(rotate(q, m), rotate(k, n))
    assert torch.allclose(dot(3, 1), dot(10, 8), atol=1e-4)
    assert torch.allclose(dot(0, 5), dot(100, 105), atol=1e-4)
    assert not torch.allclose(dot(3, 1), dot(3, 2), atol=1e-3)
    assert torch.allclose(rotate(q, 0), q)  # position 0 is the identity


def test_gqa_equals_multi_head_attention_with_repeated_kv_heads():
    torch.manual_seed(0)
    gqa_cfg = TransformerConfig(dim=32, n_heads=4, n_kv_heads=2)
    gqa, mha = Attention(gqa_cfg, 0), Attention(TransformerConfig(dim=32, n_heads=4), 0)
    assert gqa.wk.weight.shape == (2 * 8, 32) and mha.wk.weight.shape == (4 * 8, 32)
    with torch.no_grad():
        for lin in (gqa.wq, gqa.wk, gqa.wv, gqa.wo):
            lin.weight.normal_(std=0.2)
        mha.wq.weight.copy_(gqa.wq.weight)
        mha.wo.weight.copy_(gqa.wo.weight)
        # query head h reads kv head h // (n_heads / n_kv_heads)
        mha.wk.weight.copy_(gqa.wk.weight.view(2, 8, 32).repeat_interleave(2, dim=0).reshape(32, 32))
        mha.wv.weight.copy_(gqa.wv.weight.view(2, 8, 32).repeat_interleave(2, dim=0).reshape(32, 32))
    rot = Rotary(8, 10000.0)
    rot.init_weights()
    x = torch.randn(2, 5, 32)
    rope = rot(torch.arange(5).repeat(2, 1))
    out = gqa(x, rope)
    assert out.shape == (2, 5, 32)
    torch.testing.assert_close(out, mha(x, rope), atol=1e-5, rtol=1e-5)
    # n_kv_heads equal to n_heads is plain multi-head attention
    explicit = Attention(TransformerConfig(dim=32, n_heads=4, n_kv_heads=4), 0)
    explicit.load_state_dict(mha.state_dict())
    torch.testing.assert_close(explicit(x, rope), mha(x, rope))


@pytest.mark.parametrize("window,docs", [(None, False), (4, False), (None, True)])
def test_byte_lm_is_causal(window, docs):
    model = tiny_lm(context=24, window=window)
    torch.manual_seed(1)
    ids = torch.randint(0, 256, (1, 20))
    ids[0, 0] = BOS_ID
    if docs:
        ids[0, 8], ids[0, 9] = EOS_ID, BOS_ID
    with torch.no_grad():
        base = model(ids)
        later_changed = False
        for j in (1, 5, 10, 15, 19):
            changed = ids.clone()
            changed[0, j] = (changed[0, j] + 1) % 256
            out = model(changed)
            torch.testing.assert_close(out[:, :j], base[:, :j], atol=0, rtol=0)
            later_changed |= not torch.allclose(out[:, j:], base[:, j:])
    assert later_changed  # the perturbation does reach later positions: the check above can fail


def test_scores_equal_per_byte_reference():
    model = tiny_lm(context=24)
    rng = np.random.default_rng(0)
    docs = [rng.integers(0, 256, n, dtype=np.uint8) for n in (1, 7, 20, 23)]
    got = byte_lm_scores(model, docs, batch_size=3)
    with torch.no_grad():
        for doc, nats in zip(docs, got):
            seq = encode(bytes(doc))
            ref = [F.cross_entropy(model(seq[None, : i + 1])[0, -1], seq[i + 1]).item() for i in range(len(doc))]
            np.testing.assert_allclose(nats, ref, rtol=1e-4, atol=1e-5)


def test_long_documents_use_the_windowed_context():
    """Past the context, each chunk is run with the W-1 positions before it (W = min(window, context))."""
    model = tiny_lm(context=16, window=6)
    W, chunk = 6, 10
    doc = np.random.default_rng(1).integers(0, 256, 37, dtype=np.uint8)
    got = byte_lm_scores(model, [doc], chunk=chunk)[0]
    seq = encode(bytes(doc))
    ref = []
    with torch.no_grad():
        for i in range(len(doc)):
            start = max(0, (i // chunk) * chunk - W + 1)
            ctx = seq[start : i + 1][None]
            pos = torch.arange(ctx.shape[1])[None]
            logits = model(ctx, positions=pos, mask=attention_mask(pos, pos, W))[0, -1]
            ref.append(F.cross_entropy(logits, seq[i + 1]).item())
    np.testing.assert_allclose(got, ref, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("T,window,with_docs", [(64, 16, False), (61, 16, True), (33, 16, True), (40, 8, False)])
def test_blocked_window_attention_equals_dense(T, window, with_docs):
    """The blocked sliding-window path gives dense attention's result under the full mask."""
    from blt.models.masks import BlockedWindowMask

    torch.manual_seed(0)
    B, H, D = 2, 2, 8
    q, k, v = (torch.randn(B, H, T, D) for _ in range(3))
    pos = torch.arange(T).expand(B, T).clone()
    pos[1, T - 5 :] = -1  # right padding in one row
    docs = document_ids(torch.randint(0, 260, (B, T)), 256) if with_docs else None
    dense = torch.nn.functional.scaled_dot_product_attention(
        q, k, v, attn_mask=attention_mask(pos, pos, window, docs, docs)
    )
    blocked = BlockedWindowMask(pos, window, docs).attend(q, k, v)
    real = (pos >= 0)[:, None, :, None].expand_as(dense)
    torch.testing.assert_close(blocked[real], dense[real], atol=1e-5, rtol=1e-5)
    # the window really binds: a window of T keys gives a different answer
    wide = torch.nn.functional.scaled_dot_product_attention(q, k, v, attn_mask=attention_mask(pos, pos, T, docs, docs))
    assert not torch.allclose(wide[real], dense[real], atol=1e-3)


@pytest.mark.parametrize("memory, field", [(dict(layers=3), "memory.layers"), (dict(topk=9, keys=8), "memory.topk")])
def test_memory_settings_are_checked_with_the_transformer(memory, field):
    from blt.config import InvalidValue
    from blt.models.memory import MemoryConfig

    cfg = TransformerConfig(dim=32, n_layers=2, n_heads=2, memory=MemoryConfig(**memory))
    with pytest.raises(InvalidValue) as e:
        cfg.validate()
    assert e.value.field == field
