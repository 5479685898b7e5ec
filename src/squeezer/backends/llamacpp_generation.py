"""Causal-LM decoding with llama.cpp on the GGUF file itself: the fast CPU generation
backend.

The GGUF's quantized weights run in llama.cpp's kernels as they are (SmolLM2's Q4_1
file decodes several times faster there than its dequantized fp32 weights in torch),
while everything that decides a token stays squeezer's: llama.cpp only computes
logits, and the shared sampler (``generation_state.SequenceTable``) picks from them,
so seeds, top-k/p, penalties and logprobs mean what they mean on the torch backend.

Each slot is a llama.cpp sequence id with its own KV stream of ``max_len`` cells in
one context, and one ``llama_decode`` takes any mix of sequences: a step is one token
per decoding sequence and the step's prompt chunks, in one batch (split only where it
exceeds ``n_batch``), as llama-server mixes them. A freed slot keeps its cells until
reused, and a new prompt goes to the free slot holding the longest prefix of it.

llama-cpp-python is an optional extra (it compiles llama.cpp on install), so it is
imported only when this backend is built.
"""

from __future__ import annotations

import ctypes
import logging
import subprocess
import sys
import weakref
from collections.abc import Mapping, Sequence
from pathlib import Path
from types import ModuleType
from typing import Any

import numpy as np
import torch

from squeezer.backends.base import PromptChunk, SeqId, StepShortcuts, TokenOut
from squeezer.backends.device import compute_threads
from squeezer.backends.generation_state import Feed, SequenceTable
from squeezer.backends.speculation import SpeculationConfig, speculator
from squeezer.errors import BackendError, InputTooLongError, ModelLoadError

log = logging.getLogger(__name__)

#: Tokens one ``llama_decode`` takes at most (longer prefills go in several calls) and
#: the most it computes at once: the compute buffer, allocated up front, grows with it.
_MAX_BATCH = 2048
_MAX_UBATCH = 512


#: The per-sequence memory API (llama.cpp, mid-2025) that freeing a sequence needs.
_NEEDED = ("llama_get_memory", "llama_memory_seq_rm", "llama_model_load_from_file")


def _llama_cpp() -> ModuleType:
    try:
        import llama_cpp
    except ImportError as e:
        raise ModelLoadError(
            "the llamacpp backend needs llama-cpp-python: pip install 'squeezer[llamacpp]' "
            f"(it compiles llama.cpp from source, ~10 minutes on 2 cores) ({e})"
        ) from e
    missing = [name for name in _NEEDED if not hasattr(llama_cpp, name)]
    if missing:
        raise ModelLoadError(
            f"llama-cpp-python {getattr(llama_cpp, '__version__', '?')} lacks "
            f"{', '.join(missing)}: upgrade it (pip install -U 'squeezer[llamacpp]')"
        )
    return llama_cpp


#: One decode with the model's default weight buffers, in a child process: the
#: ``llama_cpp`` module is the one this process imports.
_PROBE = """
import sys, llama_cpp as l
l.llama_log_set(l.llama_log_callback(lambda *a: None), None)
l.llama_backend_init()
m = l.llama_model_load_from_file(sys.argv[1].encode(), l.llama_model_default_params())
p = l.llama_context_default_params(); p.n_ctx = 64; p.n_batch = p.n_ubatch = 64
c = l.llama_init_from_model(m, p)
b = l.llama_batch_get_one((l.llama_token * 32)(*range(1, 33)), 32)
sys.exit(l.llama_decode(c, b))
"""
_probed: dict[Path, bool] = {}


def extra_buffers_run(path: Path) -> bool:
    """Whether llama.cpp's extra weight buffers (repacked and AMX kernels) run here.

    A llama.cpp built on a CPU that lists AMX uses AMX kernels for quantized matrix
    products, and a virtual machine can list AMX while its hypervisor traps the tile
    instructions: the first ``llama_decode`` dies of SIGILL, taking the server with
    it (seen with SmolLM2's Q4_1 on a Sapphire Rapids VM). So on such a CPU one
    decode runs in a child process first; if it dies, the model loads without them.
    """
    if path not in _probed:
        flags = Path("/proc/cpuinfo").read_text() if Path("/proc/cpuinfo").exists() else ""
        ok = True
        if " amx_tile" in flags:
            try:
                child = subprocess.run(
                    [sys.executable, "-c", _PROBE, str(path)],
                    capture_output=True,
                    timeout=300,
                    check=False,
                )
                died = f"signal {-child.returncode}" if child.returncode < 0 else None
            except subprocess.TimeoutExpired:
                died = "no answer in 300 s"
            ok = died is None
            if not ok:
                log.warning(
                    "llama.cpp's AMX/repacked kernels failed (%s) on this CPU: %s loads "
                    "without them",
                    died,
                    path.name,
                )
        _probed[path] = ok
    return _probed[path]


def reference_llama(path: Path, **kwargs: Any) -> Any:
    """llama-cpp-python's own one-sequence ``Llama`` on ``path`` (the reference that
    tests and benchmarks compare with), with the weight buffers this backend would use
    here: ``Llama`` takes no such argument, so its default is swapped while it loads."""
    llama_cpp = _llama_cpp()
    if extra_buffers_run(path):
        return llama_cpp.Llama(model_path=str(path), **kwargs)
    module = llama_cpp.llama_cpp
    default = module.llama_model_default_params

    def without_extra_buffers() -> Any:
        params = default()
        params.use_extra_bufts = False
        return params

    module.llama_model_default_params = without_extra_buffers
    try:
        return llama_cpp.Llama(model_path=str(path), **kwargs)
    finally:
        module.llama_model_default_params = default


def _uniform(drafts: dict[Any, list[int]], decoding: int) -> dict[Any, list[int]]:
    """Drafts only when every decoding sequence has some, cut to the shortest.

    llama.cpp splits a batch of several KV streams into ubatches that take the same
    number of tokens from each sequence, and each ubatch is a pass over the weights:
    four sequences of which three carry four drafts took five passes, and speculation
    made four streams 0.76x as fast (docs/benchmarks.md). Equal counts keep one pass."""
    if not drafts or len(drafts) < decoding:
        return {}
    shortest = min(len(draft) for draft in drafts.values())
    return {seq: draft[:shortest] for seq, draft in drafts.items()}


def _ignore_log(level: int, text: bytes, user_data: ctypes.c_void_p) -> None:
    return None


# llama.cpp keeps a bare function pointer: the ctypes callback must outlive every call.
_quiet_callback: Any = None


def _silence(llama_cpp: ModuleType) -> None:
    """Route llama.cpp's log (a page of stderr per context, process-wide) to nowhere."""
    global _quiet_callback
    if _quiet_callback is None:
        _quiet_callback = llama_cpp.llama_log_callback(_ignore_log)
    llama_cpp.llama_log_set(_quiet_callback, ctypes.c_void_p(0))


def _release(llama_cpp: ModuleType, model: int, ctx: int, batch: Any) -> None:
    llama_cpp.llama_batch_free(batch)
    llama_cpp.llama_free(ctx)
    llama_cpp.llama_model_free(model)


class LlamaCppGenerationBackend(StepShortcuts):
    """A GGUF causal LM with ``max_slots`` concurrent sequences of up to ``max_len``
    tokens, decoded by llama.cpp on the CPU."""

    name = "llamacpp"
    device = "cpu"

    def __init__(
        self,
        gguf_path: Path | str,
        *,
        max_slots: int = 32,
        max_len: int = 2048,
        threads: int | None = None,
        verbose: bool = False,
        speculation: SpeculationConfig | None = None,
    ) -> None:
        llama_cpp = _llama_cpp()
        if not verbose:
            _silence(llama_cpp)
        path = Path(gguf_path)
        if not path.is_file():
            raise ModelLoadError(f"{path} is not a file")
        if not 0 < max_slots <= llama_cpp.llama_max_parallel_sequences():
            raise ModelLoadError(
                f"max_slots={max_slots}: llama.cpp holds 1 to "
                f"{llama_cpp.llama_max_parallel_sequences()} sequences per context"
            )
        llama_cpp.llama_backend_init()
        model_params = llama_cpp.llama_model_default_params()
        if not extra_buffers_run(path):
            model_params.use_extra_bufts = False
        model = llama_cpp.llama_model_load_from_file(str(path).encode(), model_params)
        if not model:
            raise ModelLoadError(f"llama.cpp could not load {path} as a GGUF model")
        trained = int(llama_cpp.llama_model_n_ctx_train(model))
        self.max_len = min(max_len, trained) if trained > 0 else max_len
        self.max_slots = max_slots
        self.threads = threads or compute_threads()
        # A decode step is one token per slot: it must fit one batch.
        self._n_batch = max(max_slots, min(max_slots * self.max_len, _MAX_BATCH))
        params = llama_cpp.llama_context_default_params()
        params.n_ctx = max_slots * self.max_len
        params.n_seq_max = max_slots
        params.n_batch = self._n_batch
        params.n_ubatch = min(self._n_batch, _MAX_UBATCH)
        params.n_threads = params.n_threads_batch = self.threads
        # One KV stream per sequence, not one pool for all: with a unified pool every
        # token attends over every sequence's cells (masked), so a 32-stream step slowed
        # from ~200 to ~350 ms as the sequences grew (SmolLM2, 2 cores); split streams
        # stayed at ~200 ms, and llama.cpp still decodes all sequences in one ubatch.
        if any(field[0] == "kv_unified" for field in params._fields_):
            params.kv_unified = False
        params.no_perf = True
        # Flash attention stays llama.cpp's choice ("auto": on for CPU, as in llama-server):
        # it never materializes attention scores over the max_slots x max_len pool.
        ctx = llama_cpp.llama_init_from_model(model, params)
        if not ctx:
            llama_cpp.llama_model_free(model)
            raise ModelLoadError(
                f"llama.cpp could not create a context of {max_slots} x {self.max_len} "
                f"tokens for {path} (out of memory?)"
            )
        batch = llama_cpp.llama_batch_init(self._n_batch, 0, 1)
        self._finalizer = weakref.finalize(self, _release, llama_cpp, model, ctx, batch)
        self._lib, self._ctx, self._batch = llama_cpp, ctx, batch
        self._memory = llama_cpp.llama_get_memory(ctx)
        self.vocab_size = int(
            llama_cpp.llama_vocab_n_tokens(llama_cpp.llama_model_get_vocab(model))
        )
        # The batch's arrays, written in place for each call (llama.cpp owns them).
        n = self._n_batch
        self._token = np.ctypeslib.as_array(batch.token, shape=(n,))
        self._pos = np.ctypeslib.as_array(batch.pos, shape=(n,))
        self._output = np.ctypeslib.as_array(batch.logits, shape=(n,))
        np.ctypeslib.as_array(batch.n_seq_id, shape=(n,))[:] = 1
        self._seq_id = batch.seq_id
        self.table = SequenceTable(max_slots, self.vocab_size, self.device, compact=False)
        self.table.speculator = speculator(
            speculation, max_slots=max_slots, max_len=self.max_len, vocab_size=self.vocab_size
        )

    @property
    def active(self) -> int:
        return self.table.active

    def length(self, seq: SeqId) -> int:
        return self.table.length(seq)

    def close(self) -> None:
        """Free the model, its context and cache now rather than when collected."""
        self._finalizer()

    def _run(
        self, tokens: np.ndarray, positions: np.ndarray, slots: np.ndarray, output: np.ndarray
    ) -> torch.Tensor:
        """Decode ``tokens`` (each at its position in its slot's sequence) in batches of
        at most ``n_batch``; the logits of the tokens marked in ``output``, in order."""
        if not self._finalizer.alive:
            raise BackendError("the llamacpp backend was closed")
        lib, n_batch = self._lib, self._n_batch
        logits = np.empty((int(output.sum()), self.vocab_size), dtype=np.float32)
        row = 0
        for start in range(0, len(tokens), n_batch):
            end = min(start + n_batch, len(tokens))
            n = end - start
            self._token[:n] = tokens[start:end]
            self._pos[:n] = positions[start:end]
            self._output[:n] = output[start:end]
            for i, slot in enumerate(slots[start:end].tolist()):
                self._seq_id[i][0] = slot
            self._batch.n_tokens = n
            status = lib.llama_decode(self._ctx, self._batch)
            if status != 0:
                raise BackendError(f"llama_decode failed with status {status}")
            for i in np.flatnonzero(output[start:end]).tolist():
                row_logits = lib.llama_get_logits_ith(self._ctx, i)
                if not row_logits:
                    raise BackendError(f"llama.cpp returned no logits for batch token {i}")
                logits[row] = np.ctypeslib.as_array(row_logits, shape=(self.vocab_size,))
                row += 1
        return torch.from_numpy(logits)

    def step(self, chunks: Sequence[PromptChunk], tokens: Mapping[Any, int]) -> list[TokenOut]:
        """One ``llama_decode`` over every decoding sequence's last token and the
        step's prompt chunks (logits for the decoding tokens and each prompt's last
        token only); sequences first seen here take free slots."""
        if not self._finalizer.alive:
            raise BackendError("the llamacpp backend was closed")
        new = [c.seq for c in chunks if c.first]
        self.table.admit(new, self.max_len, self.table.pick_slots(new))
        for seq in new:  # keep what the slot holds of the prompt, drop the rest
            slot = self.table.slot(seq.id)
            length = self.table.reusable_prefix(slot, seq)
            self._lib.llama_memory_seq_rm(self._memory, slot, length, -1)
            self.table.reuse(seq.id, length)
        drafts = _uniform(self.table.drafts(tokens, self.max_len), len(tokens))
        decoding = list(tokens)
        rows = self.table.rows(decoding)
        start = self.table.lengths(rows)
        feeds = self.table.feeds(chunks)
        if not (feeds or decoding):
            return []
        try:
            if decoding and int(start.max()) >= self.max_len:
                raise InputTooLongError(f"a sequence reached the model's {self.max_len} tokens")
            logits, sampled, draft_logits = self._run_step(feeds, tokens, drafts, rows, start)
            outs = self.table.finish_step(
                feeds, tokens, rows, start, sampled, logits, drafts, draft_logits
            )
        except BaseException:
            # llama.cpp rolls back only its last ubatch: drop what this step wrote, so
            # that a retry finds each cache as it was.
            for slot, length in zip(rows.tolist(), start.tolist(), strict=True):
                self._lib.llama_memory_seq_rm(self._memory, slot, length, -1)
            for feed in feeds:
                self._lib.llama_memory_seq_rm(self._memory, feed.slot, feed.start, -1)
            for seq in new:
                self.free(seq.id)
            raise
        for seq in drafts:  # rejected drafts' cells would sit at positions reused next
            self._lib.llama_memory_seq_rm(
                self._memory, self.table.slot(seq), self.table.length(seq), -1
            )
        return outs

    def _run_step(
        self,
        feeds: Sequence[Feed],
        tokens: Mapping[Any, int],
        drafts: Mapping[Any, Sequence[int]],
        rows: torch.Tensor,
        start: torch.Tensor,
    ) -> tuple[torch.Tensor, list[SeqId], dict[SeqId, torch.Tensor]]:
        """The step's tokens in slot order; the logits that pick next tokens, the
        sequences they are for, and the logits at each speculating sequence's drafts.

        With one KV stream per sequence, llama.cpp splits a batch into ubatches of
        consecutive sequence ids taking equal numbers of tokens, scanning in batch
        order, and each ubatch is a pass over all the weights. In slot order a step is
        at most two ubatches (one token of every sequence, then the rest of the prompt
        chunks); in any other order a mixed step could take one per sequence."""
        # (slot, tokens, first position, logits wanted for the last token, sequence,
        # logits wanted for every token: a speculating sequence's)
        parts: list[tuple[int, Sequence[int], int, bool, SeqId, bool]] = [
            (slot, (tokens[seq], *drafts.get(seq, ())), position, True, seq, seq in drafts)
            for seq, slot, position in zip(tokens, rows.tolist(), start.tolist(), strict=True)
        ]
        parts += [(f.slot, f.tokens, f.start, f.chunk.last, f.chunk.seq.id, False) for f in feeds]
        parts.sort(key=lambda part: part[0])
        ids, positions, owners, output = [], [], [], []
        for slot, part_tokens, first, wanted, seq, every in parts:
            size = len(part_tokens)
            ids.append(np.asarray(part_tokens, dtype=np.int32))
            positions.append(np.arange(first, first + size, dtype=np.int32))
            owners.append(np.full(size, slot, dtype=np.int32))
            # A prompt whose logprobs were asked for needs every position's logits.
            marks = np.full(size, every or self.table.scores_prompt(seq), dtype=np.int8)
            marks[-1] |= wanted
            output.append(marks)
        logits = self._run(
            np.concatenate(ids),
            np.concatenate(positions),
            np.concatenate(owners),
            np.concatenate(output),
        )
        picked: dict[SeqId, int] = {}
        draft_logits, row = {}, 0
        for (_, _, first, wanted, seq, every), marks in zip(parts, output, strict=True):
            marked = int(marks.sum())
            if every:  # the token's logits pick its next token, the rest check drafts
                picked[seq] = row
                draft_logits[seq] = logits[row + 1 : row + marked]
            elif marked > 1 or (marked and not wanted):  # the prompt's positions, scored
                self.table.score_prompt(seq, first, logits[row : row + marked])
            row += marked
            if wanted and not every:
                picked[seq] = row - 1
        # Decoding sequences first, in ``tokens``' order, then prompts that end here.
        sampled = [seq for seq in tokens] + [f.chunk.seq.id for f in feeds if f.chunk.last]
        return logits[[picked[seq] for seq in sampled]], sampled, draft_logits

    def free(self, seq: SeqId) -> None:
        """Release a sequence's slot (its llama.cpp sequence id). Its cells stay: a
        later prompt that shares their prefix takes the slot and starts from them (what
        it does not share is removed then)."""
        self.table.release(seq)
