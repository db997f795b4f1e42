"""Training data tokenized once into memory-mapped shards, and streamed from them per rank.

A corpus of millions of problems (TinyGSM: 12.3M) is too big to tokenize at every start and
to hold as an ``(N, L)`` tensor in each process. ``prepare`` cuts the JSONL file into byte
ranges at line boundaries, tokenizes the ranges in parallel processes and writes one shard per
range; ``PreparedData`` opens the shards as read-only memory maps (start-up reads only the
manifest), and ``ShardStream`` hands out rows in a shuffled order without materialising a
permutation of the whole corpus.

Layout of a prepared directory::

    manifest.json        format, seq_len, id dtype, rows per shard, max id, skipped lines,
                         the source file (path, size, mtime) and the encoder's fingerprint
    shard-00000.ids      raw uint16/uint32 ids, (rows, seq_len), row-major
    shard-00000.prompt   raw int32 prompt length of each row (the prompt is a prefix)

It is written into a temporary directory and renamed into place, so a crash leaves no
half-prepared data behind.

**Order.** The rows are cut into blocks of ``block_rows`` consecutive rows of a shard; rank
``r`` of ``w`` owns blocks ``r, r+w, r+2w, ...``. Epoch ``e`` visits the rank's blocks in the
order ``permutation(seed, e)`` and each block's rows in the order ``permutation(seed, e,
block)``, so the state is three integers (seed, epoch, position) and resuming costs nothing.
Memory: one block's permutation and one entry per block, whatever the corpus size.
"""

from __future__ import annotations

import itertools
import json
import mmap
import os
import shutil
import time
from collections.abc import Callable
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from multiprocessing import get_context
from pathlib import Path

import numpy as np
import torch

from puma_mdm.errors import PumaError

MANIFEST = "manifest.json"
FORMAT = 1
LINES_PER_BATCH = 4096  # lines a worker tokenizes at once (bounds its memory)
CHUNK_BYTES = 64 << 20  # source bytes per shard (≈ 80k TinyGSM problems)
BLOCK_ROWS = 4096  # rows shuffled together while streaming

# (lines, where the first line starts) → (ids (n, L), prompt lengths (n,), lines skipped)
Encoder = Callable[[list[bytes], int], tuple[np.ndarray, np.ndarray, int]]


class PreparedDataError(PumaError):
    """Prepared data that is missing, stale, corrupt or cannot be made from its source."""


class LineError(PumaError):
    """A source line an encoder cannot use; ``offset`` is its byte offset in the file."""

    def __init__(self, offset: int, reason: str) -> None:
        super().__init__(reason)
        self.offset, self.reason = offset, reason

    def __reduce__(self):  # raised in a worker process, re-raised here
        return LineError, (self.offset, self.reason)


@dataclass(frozen=True)
class Source:
    """The file data was prepared from, as recorded in the manifest (a changed file is stale)."""

    path: str
    size: int
    mtime_ns: int

    @classmethod
    def of(cls, path: Path) -> Source:
        st = path.stat()
        return cls(str(path.resolve()), st.st_size, st.st_mtime_ns)


def id_dtype(vocab_size: int) -> np.dtype:
    return np.dtype(np.uint16 if vocab_size <= 1 << 16 else np.uint32)


def byte_ranges(path: Path, parts: int) -> list[tuple[int, int]]:
    """``parts`` (or fewer) byte ranges covering the file, each starting at a line start."""
    size = path.stat().st_size
    if size == 0:
        return []
    cuts = [0]
    with open(path, "rb") as f:
        for i in range(1, parts):
            f.seek(max(i * size // parts, cuts[-1]))
            f.readline()  # to the start of the next line
            cuts.append(min(f.tell(), size))
    cuts.append(size)
    return [(a, b) for a, b in itertools.pairwise(cuts) if b > a]


def _encode_range(
    source: Path, start: int, end: int, encode: Encoder, seq_len: int, dtype: str, out: Path
) -> tuple[int, int, int, int]:
    """Tokenize the lines in ``[start, end)`` into ``out.ids`` / ``out.prompt`` (one worker)."""
    rows = skipped = max_id = 0
    min_prompt = seq_len
    prompts = []
    with open(source, "rb") as f, open(out.with_suffix(".ids"), "wb") as ids_file:
        f.seek(start)
        offset = start
        while offset < end:
            lines, first = [], offset
            while offset < end and len(lines) < LINES_PER_BATCH:
                line = f.readline()
                lines.append(line)
                offset += len(line)
            ids, prompt_len, skip = encode(lines, first)
            if ids.shape[1:] != (seq_len,):
                raise PreparedDataError(f"the encoder returned rows of shape {ids.shape[1:]}")
            ids_file.write(np.ascontiguousarray(ids, dtype=dtype).tobytes())
            prompts.append(prompt_len.astype(np.int32))
            rows, skipped = rows + len(ids), skipped + skip
            max_id = max(max_id, int(ids.max(initial=0)))
            min_prompt = min(min_prompt, int(prompt_len.min(initial=seq_len)))
    lengths = np.concatenate(prompts) if prompts else np.zeros(0, np.int32)
    lengths.tofile(out.with_suffix(".prompt"))
    return rows, skipped, max_id, min_prompt


def line_number(path: Path, offset: int) -> int:
    """1-based number of the line starting at byte ``offset``."""
    if offset == 0:
        return 1
    with open(path, "rb") as f, mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) as m:
        return m[:offset].count(b"\n") + 1


def prepare(
    source: str | Path,
    out: str | Path,
    encode: Encoder,
    seq_len: int,
    vocab_size: int,
    fingerprint: str,
    workers: int = 0,
    chunk_bytes: int = CHUNK_BYTES,
) -> dict:
    """Tokenize every line of ``source`` once into shards under ``out``; returns the manifest
    (plus ``seconds``). ``encode`` must be picklable (it runs in ``workers`` processes;
    0 = one per CPU core, 1 = in this process)."""
    source, out = Path(source), Path(out)
    if not source.is_file():
        raise PreparedDataError(f"no such file: {source}")
    workers = workers or os.cpu_count() or 1
    parts = max(workers, -(-source.stat().st_size // chunk_bytes))
    ranges = byte_ranges(source, parts)
    if not ranges:
        raise PreparedDataError(f"{source} is empty")
    dtype = id_dtype(vocab_size).name
    tmp = out.with_name(f".{out.name}.tmp-{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    begin = time.perf_counter()
    jobs = [
        (source, a, b, encode, seq_len, dtype, tmp / f"shard-{i:05d}")
        for i, (a, b) in enumerate(ranges)
    ]
    try:
        if workers == 1:
            results = [_encode_range(*job) for job in jobs]
        else:
            with ProcessPoolExecutor(workers, mp_context=get_context("spawn")) as pool:
                results = list(pool.map(_encode_range, *zip(*jobs, strict=True)))
    except LineError as err:
        shutil.rmtree(tmp, ignore_errors=True)
        where = f"{source}: line {line_number(source, err.offset)}"
        raise PreparedDataError(f"{where}: {err.reason}") from None
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    manifest = {
        "format": FORMAT,
        "seq_len": seq_len,
        "dtype": dtype,
        "rows": sum(r[0] for r in results),
        "skipped": sum(r[1] for r in results),
        "max_id": max(r[2] for r in results),
        "min_prompt": min(r[3] for r in results),
        "shards": [
            {"name": job[-1].name, "rows": r[0]} for job, r in zip(jobs, results, strict=True)
        ],
        "source": Source.of(source).__dict__,
        "fingerprint": fingerprint,
    }
    if manifest["rows"] == 0:
        shutil.rmtree(tmp, ignore_errors=True)
        raise PreparedDataError(f"{source}: no line could be used ({manifest['skipped']} skipped)")
    (tmp / MANIFEST).write_text(json.dumps(manifest, indent=2))
    shutil.rmtree(out, ignore_errors=True)
    tmp.rename(out)
    return {**manifest, "directory": str(out), "seconds": time.perf_counter() - begin}


class PreparedData:
    """The shards of a prepared directory, opened as read-only memory maps."""

    def __init__(self, directory: str | Path) -> None:
        self.directory = Path(directory)
        path = self.directory / MANIFEST
        if not path.is_file():
            raise PreparedDataError(
                f"{self.directory} holds no prepared data (no {MANIFEST}); run `puma prepare`"
            )
        try:
            self.manifest = json.loads(path.read_text())
            self.seq_len = int(self.manifest["seq_len"])
            dtype = np.dtype(self.manifest["dtype"])
            shards = [(s["name"], int(s["rows"])) for s in self.manifest["shards"]]
        except (json.JSONDecodeError, KeyError, TypeError, ValueError) as err:
            raise PreparedDataError(
                f"{path} is corrupt ({err}); run `puma prepare` again"
            ) from None
        if self.manifest.get("format") != FORMAT:
            raise PreparedDataError(f"{path}: unknown format; run `puma prepare` again")
        self.ids: list[np.ndarray] = []
        self.prompt_len: list[np.ndarray] = []
        for name, rows in shards:
            if rows == 0:
                continue
            ids_path, prompt_path = (self.directory / f"{name}{ext}" for ext in (".ids", ".prompt"))
            expected = rows * self.seq_len * dtype.itemsize
            if not ids_path.is_file() or ids_path.stat().st_size != expected:
                raise PreparedDataError(
                    f"{ids_path} is missing or truncated (expected {expected} bytes); "
                    "run `puma prepare` again"
                )
            if not prompt_path.is_file() or prompt_path.stat().st_size != rows * 4:
                raise PreparedDataError(f"{prompt_path} is missing or truncated")
            self.ids.append(np.memmap(ids_path, dtype, "r", shape=(rows, self.seq_len)))
            self.prompt_len.append(np.memmap(prompt_path, np.int32, "r", shape=(rows,)))

    def __len__(self) -> int:
        return sum(len(p) for p in self.prompt_len)

    @property
    def max_id(self) -> int:
        return int(self.manifest["max_id"])

    @property
    def min_prompt(self) -> int:
        """The shortest prompt of any row."""
        return int(self.manifest["min_prompt"])

    def check_matches(self, source: Path, seq_len: int, fingerprint: str) -> None:
        """Refuse data prepared from another file, length or tokenizer."""
        m, now = self.manifest, Source.of(source).__dict__
        problems = []
        if m["source"] != now:
            problems.append(f"the source file changed (prepared from {m['source']}, now {now})")
        if m["seq_len"] != seq_len:
            problems.append(f"it has seq_len {m['seq_len']}, the config {seq_len}")
        if m["fingerprint"] != fingerprint:
            problems.append("it was tokenized with another tokenizer")
        if problems:
            raise PreparedDataError(
                f"{self.directory} does not match the config: {'; '.join(problems)}. Run "
                "`puma prepare --force` or point task.options.prepared elsewhere"
            )

    def rows(self, shard: int, index: np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
        """``(x0, prompt_mask)`` of rows ``index`` of one shard (read from the memory map)."""
        ids = torch.from_numpy(self.ids[shard][index].astype(np.int64))
        lengths = torch.from_numpy(self.prompt_len[shard][index].astype(np.int64))
        return ids, torch.arange(self.seq_len) < lengths[:, None]

    def blocks(self, block_rows: int) -> list[tuple[int, int, int]]:
        """``(shard, start, stop)`` of every block of consecutive rows."""
        return [
            (s, a, min(a + block_rows, len(p)))
            for s, p in enumerate(self.prompt_len)
            for a in range(0, len(p), block_rows)
        ]


class ShardStream:
    """Rank ``rank`` of ``world``'s endless, reshuffled, resumable stream over prepared data;
    the same interface as :class:`puma_mdm.masking.ExampleStream`."""

    def __init__(
        self,
        data: PreparedData,
        rank: int = 0,
        world: int = 1,
        seed: int = 0,
        block_rows: int = BLOCK_ROWS,
    ) -> None:
        self.data, self.seed = data, seed
        self.seq_len = data.seq_len
        self._blocks = data.blocks(block_rows)[rank::world]
        if not self._blocks:
            raise PreparedDataError(
                f"{data.directory} has {len(data)} rows in fewer blocks of {block_rows} than "
                f"the {world} processes; prepare more data or run fewer processes"
            )
        self.rows_per_epoch = sum(b - a for _, a, b in self._blocks)
        self.epoch, self.position = 0, 0
        self._start_epoch(0)

    def _start_epoch(self, epoch: int) -> None:
        self.epoch = epoch
        self._order = np.random.default_rng([self.seed, epoch]).permutation(len(self._blocks))
        sizes = np.array([self._blocks[i][2] - self._blocks[i][1] for i in self._order])
        self._ends = np.cumsum(sizes)
        self._cached: tuple[int, np.ndarray] | None = None

    def _block_order(self, slot: int) -> np.ndarray:
        """Row offsets of the ``slot``-th block of this epoch, in this epoch's order."""
        if self._cached is None or self._cached[0] != slot:
            block = int(self._order[slot])
            _, a, b = self._blocks[block]
            rng = np.random.default_rng([self.seed, self.epoch, block])
            self._cached = (slot, a + rng.permutation(b - a))
        return self._cached[1]

    def check_mask_id(self, mask_id: int) -> None:
        if self.data.max_id >= mask_id:
            raise PreparedDataError(
                f"mask id {mask_id} is inside the prepared data's vocabulary (its largest id "
                f"is {self.data.max_id}); the data was prepared with another tokenizer"
            )

    @property
    def consumed(self) -> int:
        """Rows this rank handed out so far (epochs = consumed / rows_per_epoch)."""
        return self.epoch * self.rows_per_epoch + self.position

    def take(self, n: int) -> tuple[torch.Tensor, torch.Tensor]:
        """The next ``n`` rows, crossing block and epoch boundaries as needed."""
        parts = []
        while n > 0:
            if self.position == self.rows_per_epoch:
                self._start_epoch(self.epoch + 1)
                self.position = 0
            slot = int(np.searchsorted(self._ends, self.position, side="right"))
            begin = self.position - (int(self._ends[slot - 1]) if slot else 0)
            order = self._block_order(slot)
            step = min(n, len(order) - begin)
            shard = self._blocks[int(self._order[slot])][0]
            parts.append(self.data.rows(shard, order[begin : begin + step]))
            self.position += step
            n -= step
        if not parts:
            empty = torch.empty(0, self.seq_len, dtype=torch.long)
            return empty, empty.bool()
        return torch.cat([x for x, _ in parts]), torch.cat([m for _, m in parts])

    def state_dict(self) -> dict[str, int]:
        return {"epoch": self.epoch, "position": self.position, "seed": self.seed}

    def load_state_dict(self, state: dict[str, int]) -> None:
        self.seed = int(state["seed"])
        self._start_epoch(int(state["epoch"]))
        self.position = int(state["position"])
