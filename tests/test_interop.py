"""The shards read unchanged by the webdataset library, timm's dataset factory (wds/ reader)
and Hugging Face datasets; and generation can stop early and report where it is."""

from __future__ import annotations

import io
import shutil
from pathlib import Path

import pyarrow.parquet as pq
import pytest
from conftest import OFFLINE_CONFIG, cli, set_args
from PIL import Image


def _manifest(run: Path) -> dict[str, int]:
    rows = pq.read_table(run / "manifest.parquet").to_pylist()
    return {row["key"]: row["class_index"] for row in rows}


def test_webdataset_reads_the_shards(finished_run: Path) -> None:
    import webdataset as wds

    urls = [str(p) for p in sorted((finished_run / "shards").glob("*.tar"))]
    samples = list(wds.WebDataset(urls, shardshuffle=False).decode("pil").to_tuple(
        "__key__", "jpg", "json"))  # fmt: skip
    assert {key: meta["class_index"] for key, _, meta in samples} == _manifest(finished_run)
    assert all(image.mode == "RGB" and image.size == (32, 32) for _, image, _ in samples)


def test_timm_dataset_factory_reads_the_shards(finished_run: Path) -> None:
    from timm.data import create_dataset

    dataset = create_dataset("wds/offline-demo", root=str(finished_run / "shards"),
                             split="train", target_key="class_index")  # fmt: skip
    assert len(dataset) == 100  # from the _info.json the generate stage writes
    labels = sorted(target for _, target in dataset)
    assert labels == sorted(_manifest(finished_run).values())
    image, _ = next(iter(dataset))
    assert isinstance(image, Image.Image) and image.size == (32, 32)


def test_hugging_face_datasets_reads_the_shards(finished_run: Path, tmp_path: Path) -> None:
    from datasets import load_dataset

    files = sorted(str(p) for p in (finished_run / "shards").glob("*.tar"))
    dataset = load_dataset("webdataset", data_files={"train": files}, split="train",
                           cache_dir=str(tmp_path / "hf-cache"))  # fmt: skip
    assert len(dataset) == 100
    meta = dataset["json"]
    assert {row["key"]: row["class_index"] for row in meta} == _manifest(finished_run)
    image = dataset[0]["jpg"]
    if isinstance(image, dict):  # some versions leave the bytes undecoded
        image = Image.open(io.BytesIO(image["bytes"]))
    assert image.size == (32, 32)


@pytest.mark.slow
def test_max_shards_stops_early_and_status_tells_where_it_is(
    finished_run: Path, kit_overrides: list[str], tmp_path: Path
) -> None:
    out = tmp_path / "partial"
    shutil.copytree(finished_run, out)
    for name in ("000003", "000004"):  # as if generation had stopped after three shards
        for ext in ("tar", "json"):
            (out / "shards" / f"{name}.{ext}").unlink()
    args = ["generate", str(OFFLINE_CONFIG), "--out", str(out), *set_args(kit_overrides)]
    result = cli(*args, "--max-shards", "1")
    assert result.returncode == 0, result.stderr
    assert "4 of 5 shards done (--max-shards 1)" in result.stderr.replace("\n", " ")
    made = (out / "shards" / "000003.tar").read_bytes()
    assert made == (finished_run / "shards" / "000003.tar").read_bytes()
    assert not (out / "shards" / "000004.tar").exists()
    assert not (out / ".state" / "generate.json").exists()  # the stage is not done

    status = cli("generate", "--status", "--run", str(out))
    assert status.returncode == 0, status.stderr
    assert "shards 4 of 5 done; images 80 of 100" in status.stderr
    assert "ETA 0h00m" in status.stderr

    missing = cli("generate", "--status", "--run", str(tmp_path / "nothing-here"))
    assert missing.returncode == 2 and "is not a diversynth run directory" in missing.stderr
