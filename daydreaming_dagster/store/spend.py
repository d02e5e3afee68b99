"""What an output root has paid for: the provenance sidecars of every paid answer (the stored
responses, and those moved to `_superseded/` or kept in `_rejected/`), summed per asset, model
and backend. The files are the record, so the total survives restarts and every process that
reads them sees the same one.

A process that checks before every call reads each sidecar once: a folder is listed again only
when its modification time changed (or changed so recently that a second change could hide
behind the same time stamp), and only the sidecars it had not seen are read."""

from __future__ import annotations

import json
import math
import os
import threading
import time
from dataclasses import dataclass, field, fields
from pathlib import Path

from .layout import SIDECAR_SUFFIX, asset_folder
from .roots import data_path, is_remote

PAID_ASSETS = ("generation_response", "evaluation_response")
# File systems stamp modification times at a coarse tick; a folder changed within this many
# seconds is listed again even when its time stamp looks unchanged.
SETTLE_S = 2.0

Key = tuple[str, str, str]  # (asset, model_id, backend)


@dataclass
class Tally:
    """Paid answers of one asset, model and backend: calls and tokens, the provider-reported cost,
    and the tokens of the answers whose provider reported none (to be priced from the table)."""

    calls: int = 0
    prompt_tokens: int = 0
    completion_tokens: int = 0
    calls_without_usage: int = 0
    provider_cost_usd: float = 0.0
    calls_with_provider_cost: int = 0
    unreported_calls: int = 0
    unreported_prompt_tokens: int = 0
    unreported_completion_tokens: int = 0
    unreported_without_usage: int = 0
    # The fewest prompt characters per reported prompt token (None until a sidecar has both).
    min_chars_per_token: float | None = field(default=None, compare=False)

    def add(self, other: "Tally", sign: int = 1) -> None:
        for f in fields(self):
            if f.name != "min_chars_per_token":
                setattr(self, f.name, getattr(self, f.name) + sign * getattr(other, f.name))
        if sign > 0 and other.min_chars_per_token is not None:
            mine = self.min_chars_per_token
            self.min_chars_per_token = other.min_chars_per_token if mine is None else min(mine, other.min_chars_per_token)

    def copy(self) -> "Tally":
        fresh = Tally()
        fresh.add(self)
        return fresh


def _count(value) -> int | None:
    return value if isinstance(value, int) and not isinstance(value, bool) and value >= 0 else None


def _amount(value) -> float | None:
    ok = isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value) and value >= 0
    return float(value) if ok else None


def batch_price_factor(provenance: dict) -> float:
    """The share of the list price an answer costs: its `batch_price_factor` (a batched call), else 1."""
    factor = _amount(provenance.get("batch_price_factor"))
    return factor if factor is not None and 0 < factor <= 1 else 1.0


def answer_tally(provenance: dict | None) -> tuple[tuple[str, str], Tally]:
    """One paid answer as ((model_id, backend), Tally); an unreadable sidecar is an answer of an
    unknown model without usage (its cost cannot be known)."""
    p = provenance if isinstance(provenance, dict) else {}
    prompt, completion = _count(p.get("prompt_tokens")), _count(p.get("completion_tokens"))
    cost = _amount(p.get("provider_cost_usd"))
    without_usage = prompt is None or completion is None
    t = Tally(calls=1, prompt_tokens=prompt or 0, completion_tokens=completion or 0, calls_without_usage=int(without_usage))
    if cost is not None:
        t.provider_cost_usd, t.calls_with_provider_cost = cost, 1
    else:
        # A batched answer costs its tokens at the batch price: the list price times its factor.
        factor = batch_price_factor(p)
        t.unreported_calls = 1
        t.unreported_prompt_tokens, t.unreported_completion_tokens = (prompt or 0) * factor, (completion or 0) * factor
        t.unreported_without_usage = int(without_usage)
    chars = _count(p.get("prompt_chars"))
    if chars and prompt:
        t.min_chars_per_token = chars / prompt
    return (str(p.get("model_id") or "unknown"), str(p.get("backend") or "unknown")), t


@dataclass
class _Folder:
    mtime_ns: int
    files: dict[tuple[str, int], tuple[tuple[str, str], Tally]]
    subfolders: list[Path]
    totals: dict[tuple[str, str], Tally]


class PaidLedger:
    """The paid answers under one output root, re-read as folders change (see the module docstring)."""

    def __init__(self, root: Path) -> None:
        self.root = Path(root)
        self._folders: dict[Path, tuple[str, _Folder]] = {}
        self._totals: dict[Key, Tally] = {}
        self._lock = threading.Lock()

    def tallies(self) -> dict[Key, Tally]:
        """Every paid answer now on disk, summed per (asset, model_id, backend)."""
        with self._lock:
            seen: set[Path] = set()
            for asset in PAID_ASSETS:
                stack = [asset_folder(self.root, asset)]
                while stack:
                    path = stack.pop()
                    folder = self._refresh(asset, path)
                    if folder is not None:
                        seen.add(path)
                        stack.extend(folder.subfolders)
            for gone in set(self._folders) - seen:
                asset, folder = self._folders.pop(gone)
                self._apply(asset, folder.totals, -1)
            return {k: t.copy() for k, t in self._totals.items() if t.calls}

    def _refresh(self, asset: str, path: Path) -> _Folder | None:
        try:
            stat = os.stat(path)
        except (FileNotFoundError, NotADirectoryError):
            return None
        cached = self._folders.get(path)
        settled = time.time() - stat.st_mtime > SETTLE_S
        if cached is not None and cached[1].mtime_ns == stat.st_mtime_ns and settled:
            return cached[1]
        old = cached[1] if cached else None
        folder = _Folder(stat.st_mtime_ns, {}, [], {})
        try:
            entries = list(os.scandir(path))
        except (FileNotFoundError, NotADirectoryError):
            return None
        for entry in entries:
            if entry.name.startswith("."):
                continue
            if entry.is_dir(follow_symlinks=False):
                folder.subfolders.append(Path(entry.path))
            elif entry.name.endswith(SIDECAR_SUFFIX):
                ident = (entry.name, entry.inode())
                record = old.files.get(ident) if old else None
                folder.files[ident] = record or answer_tally(_read_json(entry.path))
        for key, tally in folder.files.values():
            folder.totals.setdefault(key, Tally()).add(tally)
        if old is not None:
            self._apply(asset, old.totals, -1)
        self._apply(asset, folder.totals, +1)
        self._folders[path] = (asset, folder)
        return folder

    def _apply(self, asset: str, totals: dict[tuple[str, str], Tally], sign: int) -> None:
        for (model_id, backend), tally in totals.items():
            self._totals.setdefault((asset, model_id, backend), Tally()).add(tally, sign)


def _read_json(path: str) -> dict | None:
    try:
        with open(path, encoding="utf-8") as handle:
            return json.load(handle)
    except (OSError, ValueError):
        return None


_LEDGERS: dict[Path, PaidLedger] = {}
_LEDGERS_LOCK = threading.Lock()


def paid_tallies(root: Path) -> dict[Key, Tally]:
    """Every paid answer under `root`, summed per (asset, model_id, backend); this process's
    ledger of that root remembers what it has read."""
    root = data_path(root)
    if is_remote(root):
        from .object_spend import ObjectLedger

        with _LEDGERS_LOCK:
            ledger = _LEDGERS.setdefault(root, ObjectLedger(root))
        return ledger.tallies()
    root = root.resolve()
    with _LEDGERS_LOCK:
        ledger = _LEDGERS.setdefault(root, PaidLedger(root))
    return ledger.tallies()
