"""Fast BLT generation: online patching with a KV cache at every level, batched.

    outs = generate_blt(model, [b"To be, or ", b"ROMEO:"], GenerationArgs(max_new_bytes=256, temperature=0.8))

`IncrementalBLT` holds the state of B rows and consumes one id per row per step. Feeding the
id at input position p:
  1. entropy model: one cached step gives the patcher's signal at p+1, entropies[p+1] (the
     entropy predicting p+1, or the surprisal of byte p under the previous step's prediction;
     skipped for patchers without a signal);
  2. local encoder: hash n-grams from the last max(n) ids, one cached step of its blocks gives
     the byte state of p, appended to the row's open patch;
  3. patcher: `patcher.starts` runs on the row's history ids[0..p] + a PAD placeholder at p+1
     and entropies[0..p+1]. A start at q reads only ids[:q] and entropies[:q+1], so the
     decision starts[p+1] is the offline one by construction, for every patcher. The cost is
     O(history) vectorised work per step (the bpe patcher scans it in Python: slow, but exact);
  4. for the rows whose patch just closed (starts[p+1]) and ONLY those: the encoder pools the
     patch (`LocalEncoder.pool_patch`: max-pool + k-query cross-attention over its bytes), the
     latent takes one cached step at that row's patch index, and the decoder's k key/value
     slots are recomputed from the new latent output. Other rows skip the latent entirely;
  5. local decoder: cross-attention to its row's slots, which come from the newest closed
     patch, patch(p+1) - 1 (THE DECODER RULE of blt.models.blt), one cached step of its
     blocks, head -> logits for position p+1.
Rows advance in lockstep (row r is at position p at step p). Prompts: the first m positions
(m = the shortest BOS + prompt, at most PREFILL_MAX) run in one pass per model
(`IncrementalBLT.prefill`: the models' own forward code with caches that keep what steps need,
leaving the state m steps would leave); the rest of the longer prompts is fed one byte per
step while the shorter rows already sample.

Caches (`models.cached_stack.CachedStack`): ring buffers of min(window, positions needed)
slots. The entropy model attends to its last min(window, context) positions (as
`online_entropies`), the local encoder and decoder to their last min(window, cfg.context)
bytes, the latent to its last `model.latent.span` patches among those starting within the last
cfg.context bytes. THE SLIDING RULE is the model's own for long inputs (models/blt.py): the
generated log-probabilities equal one forward pass over the final sequence (`window_starts` +
`model(...)`), up to float rounding, as long as it fits in one scoring window (4 x context, see
blt.evaluation.scorer), and beyond that every level keeps sliding (positions keep growing, RoPE
is relative). The reference path (`blt.inference.slow`) instead reruns the model on the last
cfg.context positions for every byte, as the public implementations do.
"""
from __future__ import annotations

import torch

from blt.inference.args import GenerationArgs
from blt.inference.rows import FIRST_COLUMNS, OnBytes, grow_columns, run_rows
from blt.models.cached_stack import CachedStack
from blt.models.hash_ngram import MISSING
from blt.models.latent import patch_start_positions
from blt.patching.entropy import next_signal, position_signal
from blt.vocab import PAD_ID

PREFILL_MAX = 2048  # prompt positions run in one pass (its masks are (B, 1, T, T)); the rest step


class IncrementalBLT:
    """Generation state of a ByteLatentTransformer for `batch` rows (see the module docstring).

    step(ids (B,), active (B,) bool) consumes input position p of every row and returns the
    logits (B, V) for position p+1; rows not active never close a patch (their latent is left
    alone). `starts` (B, p+1) and `entropies` (B, p+1) are the history the patcher decided on;
    lat_stack.row_count (B,) counts each row's closed patches (its latent steps).
    """

    def __init__(self, model, batch: int, max_positions: int):
        model.check_patching()
        cfg, enc, dec = model.cfg, model.encoder, model.decoder
        self.model, self.patcher, self.B, self.N = model, model.patcher, batch, max_positions
        ref = enc.embed.byte_embed.weight
        dev = ref.device
        C = cfg.context
        self.uses_entropy = self.patcher.needs_entropy
        if self.uses_entropy:
            em = model.entropy_model
            self.ent_stack = CachedStack(em.stack, batch, em.cfg.span, max_positions)
        self.em_logits = None  # (B, V) the entropy model's prediction of position p (surprisals read it)
        self.enc_stack = CachedStack(enc.stack, batch, enc.byte_span, max_positions)
        # a latent query sees patches starting fewer than C bytes before it: never more than C
        self.lat_stack = CachedStack(model.latent.stack, batch, min(model.latent.span, C), max_positions,
                                     per_row=True, start_span=C)
        self.dec_stack = CachedStack(dec.stack, batch, dec.byte_span, max_positions)
        self.recent = torch.full((batch, enc.embed.max_n), MISSING, dtype=torch.long, device=dev)
        # the patcher's history: position p+1 holds the PAD placeholder when it decides starts[p+1]
        # (buffers grow with the positions reached: `_reserve`)
        first = min(max_positions, FIRST_COLUMNS) + 1
        self.ids = torch.full((batch, first), PAD_ID, dtype=torch.long, device=dev)
        self.ent = torch.zeros(batch, first, device=dev)
        self.start = torch.zeros(batch, first, dtype=torch.bool, device=dev)
        self.start[:, 0] = True
        self.p = 0
        # the open patch: byte states since the row's last start (one set per pooling
        # cross-attention), pooled when the patch closes; zeros: masked bytes still enter pooling
        self.open_states = ref.new_zeros(enc.pool_layers, batch, 16, enc.cfg.dim)  # (Lp, B, L, De)
        self.open_len = torch.zeros(batch, dtype=torch.long, device=dev)
        self.open_max = 0
        self.rows = torch.arange(batch, device=dev)
        # the decoder's cross-attention keys/values from each row's newest closed patch, one
        # pair per decoder cross-attention: (Lc, B, Hkv, k, Dh) each
        dh = dec.cfg.dim // dec.cfg.n_heads
        self.slot_k = ref.new_zeros(len(dec.crosses), batch, dec.cfg.kv_heads, cfg.k, dh)
        self.slot_v = torch.zeros_like(self.slot_k)

    @property
    def starts(self) -> torch.Tensor:
        return self.start[:, : self.p + 1]

    @property
    def entropies(self) -> torch.Tensor:
        return self.ent[:, : self.p + 1]

    def _reserve(self, n: int):
        """History buffers of at least n positions."""
        self.ids = grow_columns(self.ids, n, self.N + 1, PAD_ID)
        self.ent = grow_columns(self.ent, n, self.N + 1, 0.0)
        self.start = grow_columns(self.start, n, self.N + 1, False)

    def _append_open(self, states: list[torch.Tensor]):
        """The newest byte's states (one (B, De) per pooling cross-attention) join the open patch."""
        if self.open_max == self.open_states.shape[2]:
            grown = self.open_states.new_zeros(*self.open_states.shape[:2], 2 * self.open_max, self.open_states.shape[3])
            grown[:, :, : self.open_max] = self.open_states
            self.open_states = grown
        self.open_states[:, self.rows, self.open_len] = torch.stack(states)
        self.open_len += 1
        self.open_max += 1

    def _set_slots(self, rows: torch.Tensor, latent: torch.Tensor):
        """The decoder's keys/values for `rows` from their newest latent outputs (n, Dl)."""
        for i, (k, v) in enumerate(self.model.decoder.slot_keys_values(latent)):
            self.slot_k[i, rows], self.slot_v[i, rows] = k, v

    def _close(self, rows: torch.Tensor):
        """Pool the open patch of `rows`, step the latent for them, refresh their decoder slots."""
        lens = self.open_len[rows]  # (n,)
        L = int(lens.max())
        states = list(self.open_states[:, :, :L].index_select(1, rows))  # [(n, L, De)] per pooling layer
        valid = torch.arange(L, device=rows.device) < lens[:, None]  # (n, L)
        patch = self.model.encoder.pool_patch(states, valid)  # (n, Dl)
        first_byte = self.p + 1 - lens  # the closing patch holds positions p+1-len .. p
        self._set_slots(rows, self.lat_stack.step(patch, rows, first_byte))  # latent (n, Dl)
        self.open_len[rows] = 0
        self.open_max = int(self.open_len.max())

    def prefill(self, ids: torch.Tensor) -> torch.Tensor:
        """Inputs 0..m-1 of every row (ids (B, m), BOS first) in one pass per model, the state
        ending where m steps would leave it; logits (B, V) for position m. Each pass is the
        model's own forward code (masks as in training), with caches that keep what steps need."""
        if self.p != 0:
            raise ValueError("prefill starts a fresh state")
        model, enc, dec = self.model, self.model.encoder, self.model.decoder
        B, m = ids.shape
        x = ids.to(self.ids.device)
        self._reserve(m + 1)
        self.ids[:, :m] = x
        pos = torch.arange(m, device=x.device).expand(B, m)
        if self.uses_entropy:
            logits = model.entropy_model(x, positions=pos, cache=self.ent_stack.prefill(pos))  # (B, m, V)
            self.ent[:, 1 : m + 1] = position_signal(self.patcher.signal, logits, self.ids[:, : m + 1])[:, 1:]
            self.em_logits = logits[:, -1]
        e, pool_states = enc.byte_states(x, pos, self.enc_stack.prefill(pos))  # (B, m, De), [(B, m, De)]
        self.recent = torch.nn.functional.pad(x, (self.recent.shape[1], 0), value=MISSING)[:, -self.recent.shape[1]:]
        ent = self.ent[:, : m + 1] if self.uses_entropy else None
        self.start[:, : m + 1] = self.patcher.starts(self.ids[:, : m + 1], ent)
        # pool every patch holding an input, as LocalEncoder does; the latent takes the closed ones
        patch = self.start[:, : m + 1].long().cumsum(1) - 1  # (B, m+1)
        byte_patch, closed = patch[:, :m], patch[:, m]  # closed (B,): patches that end before m
        P = int(byte_patch[:, -1].max()) + 1
        patches = enc.pool_patches(pool_states, byte_patch, P)  # (B, P, Dl)
        idx = torch.arange(P, device=x.device).expand(B, P)
        lat_pos = torch.where(idx < closed[:, None], idx, -1)  # the open patch is padding here
        first_bytes = patch_start_positions(byte_patch, P)  # (B, P)
        latent = model.latent.stack(patches, lat_pos, cache=self.lat_stack.prefill(lat_pos, first_bytes))  # (B, P, Dl)
        self._set_slots(self.rows, latent[self.rows, closed - 1])
        # the decoder, THE DECODER RULE: input p reads patch(p+1) - 1
        h = dec.hidden(x, e, latent, patch[:, 1:] - 1, pos, self.dec_stack.prefill(pos))  # (B, m, Dd)
        # the open patch: the inputs after the last closed patch
        D = e.shape[-1]
        self.open_len = (byte_patch == closed[:, None]).sum(1)
        self.open_max = int(self.open_len.max())
        while self.open_states.shape[2] < self.open_max:
            self.open_states = torch.cat([self.open_states, torch.zeros_like(self.open_states)], 2)
        j = torch.arange(self.open_max, device=x.device)
        src = (m - self.open_len[:, None] + j).clamp(max=m - 1)[..., None].expand(-1, -1, D)  # (B, L, D)
        for i, states in enumerate(pool_states):  # past a row's length: unused
            self.open_states[i, :, : self.open_max] = states.gather(1, src)
        self.p = m
        return dec.logits(h[:, -1])  # (B, V)

    def step(self, ids: torch.Tensor, active: torch.Tensor | None = None) -> torch.Tensor:
        p = self.p
        if p >= self.N:
            raise ValueError(f"this state was built for {self.N} positions")
        x = ids.to(self.ids.device)
        self._reserve(p + 2)
        self.ids[:, p] = x
        if self.uses_entropy:
            em = self.model.entropy_model
            logits = em.head(self.ent_stack.step(em.embed(x)))  # (B, V): predicts p+1
            self.ent[:, p + 1] = next_signal(self.patcher.signal, self.em_logits, x, logits)
            self.em_logits = logits
        self.recent = torch.cat([self.recent[:, 1:], x[:, None]], dim=1)  # (B, max_n), newest last
        enc = self.model.encoder
        layers = []
        keep = (lambda i, h: layers.append(h) or h) if enc.every_layer else None
        e = self.enc_stack.step(enc.embed.embed_newest(self.recent), after_layer=keep)  # (B, De)
        self._append_open(layers[:-1] + [e] if enc.every_layer else [e])
        ent = self.ent[:, : p + 2] if self.uses_entropy else None
        start = self.patcher.starts(self.ids[:, : p + 2], ent)[:, p + 1]  # (B,)
        self.start[:, p + 1] = start
        closing = start if active is None else start & active.to(start.device)
        rows = closing.nonzero().squeeze(1)
        if rows.numel():
            self._close(rows)
        dec = self.model.decoder

        def read(i, h):  # cross-attention i: to the row's newest closed patch
            return dec.read_slots(i, h, self.slot_k[i], self.slot_v[i])

        h = dec.inputs(e)  # (B, Dd)
        if not dec.every_layer:
            h = read(0, h)
        self.p += 1
        return dec.logits(self.dec_stack.step(h, before_layer=read if dec.every_layer else None))  # (B, V)


@torch.inference_mode()
def generate_blt(model, prompts: list[bytes], args: GenerationArgs = GenerationArgs(),
                 on_bytes: OnBytes | None = None) -> list[bytes]:
    """Continue every prompt with the incremental state; return each row's new bytes (EOS and
    stop string excluded). on_bytes(row, new_bytes) streams them (see inference.rows)."""
    model.check_patching()
    device = next(model.parameters()).device

    def make(lens: list[int], positions: int):
        state = IncrementalBLT(model, len(lens), positions)
        m = min(min(lens), PREFILL_MAX)  # positions every row knows: prefilled in one pass

        def next_logits(p, ids, active, need):
            if p < m - 1:
                return None  # no row samples before its prompt is used up
            logits = state.prefill(ids[:, :m]) if p == m - 1 else state.step(ids[:, p], torch.tensor(active))
            return logits[need]

        return next_logits

    return run_rows(prompts, args, on_bytes, device, make)
