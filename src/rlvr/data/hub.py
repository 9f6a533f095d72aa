"""Hugging Face datasets as problem sources: ``data.source=hf:<repo>[:<config>][@<split>]``.

``hf:openai/gsm8k:main@test`` loads split ``test`` of config ``main`` of the hub dataset ``openai/gsm8k`` through
``datasets.load_dataset`` (imported only here, only when such a source is used); the config defaults to the
dataset's own default and the split to ``train``. Rows become problems as ``rlvr.data.rows`` says:
``data.prompt_field``, ``data.answer_field``, ``data.template`` and ``data.answer_extract`` (``boxed``, ``hash``:
``rlvr.data.gold``) choose the fields and the gold; ids are ``<repo>@<split>:<row index>``. The benchmark presets
(``rlvr.data.benchmarks``) are this loader with their facts filled in.

Where the rows come from, first match wins:

1. a local copy named explicitly: ``data.path`` (``path=`` of the loader): a folder written by
   ``datasets.save_to_disk`` (a ``DatasetDict``: the split is taken from it; a ``Dataset``: it is the split), another
   folder (read by ``datasets.load_dataset(folder)``: a folder of data files or a downloaded repository), or one
   ``.parquet`` / ``.jsonl`` / ``.json`` / ``.csv`` file;
2. ``$RLVR_DATA_DIR/<key>`` when it exists, the same kinds (``<key>`` is a preset's name, ``math500``, or the repo id,
   ``openai/gsm8k``), so one environment variable points every preset at its local copy;
3. ``<repo>`` itself when it is an existing folder;
4. ``datasets.load_dataset(repo, config, split=split)``: the hub, or, offline (``HF_HUB_OFFLINE=1``, which
   ``rlvr train`` and ``rlvr eval`` set unless it is set already), the datasets cache (``HF_DATASETS_CACHE``) of an
   earlier download. ``HF_HUB_OFFLINE=0 rlvr ...`` lets it download.

Every failure is a DataError that names the repo, config, split and (when missing) the field, before any model
loads: the dataset or local copy cannot be loaded (with the datasets library's own reason), the split does not
exist or is empty, a field is missing (the fields there are listed), or rows are bad (``rlvr.data.rows``).
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from rlvr.data import gold, sources
from rlvr.data.base import DataError
from rlvr.data.rows import RowFormat, row_problems
from rlvr.types import Problem

__all__ = ["HubSet", "parse", "local_copy", "load_split", "hub_problems", "hf_source", "DATA_DIR_ENV"]

DATA_DIR_ENV = "RLVR_DATA_DIR"
"""Environment variable: a folder holding local copies of hub datasets, one per preset name or repo id."""

_FILE_BUILDERS = {".parquet": "parquet", ".jsonl": "json", ".json": "json", ".csv": "csv"}


@dataclass(frozen=True)
class HubSet:
    """One split of one config of a hub dataset."""

    repo: str
    config: str | None = None
    split: str = "train"

    @property
    def label(self) -> str:
        """For messages: ``hf openai/gsm8k (config main, split test)``."""
        return f"hf {self.repo} (config {self.config or 'default'}, split {self.split})"


def parse(spec: str) -> HubSet:
    """``<repo>[:<config>][@<split>]`` -> HubSet; DataError for an empty part."""
    rest, at, split = spec.rpartition("@") if "@" in spec else (spec, "", "train")
    repo, colon, config = rest.partition(":")
    if not repo or (colon and not config) or (at and not split):
        raise DataError(f"hf source {spec!r}: name it hf:<repo>[:<config>][@<split>] (e.g. hf:openai/gsm8k:main@test)")
    return HubSet(repo, config or None, split)


def local_copy(key: str, path: str | os.PathLike[str] | None) -> Path | None:
    """Where a local copy of ``key`` lies (the module docstring's steps 1-3), or None (load from the hub or cache)."""
    if path is not None:
        p = Path(path).expanduser()
        if not p.exists():
            raise DataError(f"local copy {p} of {key} does not exist")
        return p
    root = os.environ.get(DATA_DIR_ENV)
    if root and (Path(root).expanduser() / key).exists():
        return Path(root).expanduser() / key
    own = Path(key).expanduser()
    return own if own.is_dir() else None


def load_split(hs: HubSet, path: Path | None) -> Any:
    """The ``datasets.Dataset`` of ``hs``, from ``path`` (a local copy) or ``datasets.load_dataset``."""
    import datasets

    try:
        if path is None:
            return datasets.load_dataset(hs.repo, hs.config, split=hs.split)
        if path.is_dir() and ((path / "dataset_dict.json").is_file() or (path / "state.json").is_file()):
            return _from_disk(datasets.load_from_disk(str(path)), hs, path)
        if path.is_dir():
            return datasets.load_dataset(str(path), hs.config, split=hs.split)
        builder = _FILE_BUILDERS.get(path.suffix.lower())
        if builder is None:
            raise DataError(f"{hs.label}: local copy {path} is not a folder or a {'/'.join(_FILE_BUILDERS)} file")
        return datasets.load_dataset(builder, data_files=str(path), split="train")
    except DataError:
        raise
    except Exception as err:  # noqa: BLE001 - the datasets library raises many kinds; each becomes one clear error
        raise DataError(_load_error(hs, path, err)) from None


def _from_disk(saved: Any, hs: HubSet, path: Path) -> Any:
    """The split of a ``save_to_disk`` folder: a DatasetDict's entry, or a Dataset saved as that split."""
    if hasattr(saved, "keys"):
        if hs.split not in saved:
            raise DataError(f"{hs.label}: the local copy {path} has no split {hs.split!r} "
                            f"(splits: {', '.join(saved.keys())})")
        return saved[hs.split]
    if saved.split is not None and str(saved.split) != hs.split:
        raise DataError(f"{hs.label}: the local copy {path} holds split {str(saved.split)!r}, not {hs.split!r}")
    return saved


def _load_error(hs: HubSet, path: Path | None, err: Exception) -> str:
    what = f"{type(err).__name__}: {str(err).strip().splitlines()[0] if str(err).strip() else ''}"
    if path is not None:
        return f"{hs.label}: cannot load the local copy {path}: {what}"
    return (f"{hs.label}: cannot load it: {what}. Offline (HF_HUB_OFFLINE=1, the default of rlvr train and rlvr eval) "
            "it must be in the datasets cache (HF_DATASETS_CACHE) from an earlier download; or give a local copy "
            f"(data.path, or ${DATA_DIR_ENV}/<name>: a folder saved by datasets.save_to_disk); HF_HUB_OFFLINE=0 "
            "lets it download")


def hub_problems(hs: HubSet, *, key: str, id_prefix: str, path: str | os.PathLike[str] | None, size: int | None,
                 prompt_field: str, answer_field: str, template: str = "{prompt}", answer_extract: str | None = None,
                 keep: tuple[str, tuple[str, ...]] | None = None, verifier: str = "math") -> list[Problem]:
    """Problems from one split: its fields checked, rows kept by ``keep`` (field, values), then rows validated."""
    where_from = local_copy(key, path)
    ds = load_split(hs, where_from)
    where = hs.label + (f" from {where_from}" if where_from is not None else "")
    if len(ds) == 0:
        raise DataError(f"{where}: the split is empty")
    for field in (prompt_field, answer_field, *([keep[0]] if keep else [])):
        if field not in ds.column_names:
            raise DataError(f"{where}: no field {field!r} (fields: {', '.join(ds.column_names)})")
    rows = list(enumerate(ds.to_list()))
    if keep is not None:
        rows = [(i, row) for i, row in rows if str(row[keep[0]]) in keep[1]]
        if not rows:
            raise DataError(f"{where}: no row has {keep[0]} in {list(keep[1])}")
    fmt = RowFormat(where=where, unit="row", numbering="0-based row indices", id_prefix=id_prefix,
                    prompt_field=prompt_field, answer_field=answer_field, template=template,
                    extract=(answer_extract, gold.extractor(answer_extract)) if answer_extract else None)
    return row_problems(rows, fmt, size=size, verifier=verifier)


@sources.register("hf", argument="repo", row_fields=True, local_copy=True, default_verifier="math")
def hf_source(repo: str, *, size: int | None, path: str | os.PathLike[str] | None, prompt_field: str,
              answer_field: str, template: str, answer_extract: str | None) -> list[Problem]:
    """``hf:<repo>[:<config>][@<split>]``: one split of a hub dataset (see the module docstring); ``repo`` is the
    whole text after ``hf:``."""
    hs = parse(repo)
    return hub_problems(hs, key=hs.repo, id_prefix=f"{hs.repo}@{hs.split}", path=path, size=size,
                        prompt_field=prompt_field, answer_field=answer_field, template=template,
                        answer_extract=answer_extract)
