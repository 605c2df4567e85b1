"""Image captions: COCO captions JSON and the Karpathy split file (dataset_coco.json), images in a folder.

Both formats become the same samples. Training (split "train") yields one Sample per caption, so every
caption is trained on; the other splits yield one Sample per image whose `references` are all of its
captions, which is what CIDEr-D and BLEU score against.

COCO (`data.format=coco`), one JSON per split, e.g. annotations/captions_train2017.json:
    {"images": [{"id": 391895, "file_name": "000000391895.jpg", ...}, ...],
     "annotations": [{"id": 770337, "image_id": 391895, "caption": "A man riding ..."}, ...]}
  image paths: {data.root}/{data.images[split]}/{file_name}

Karpathy (`data.format=karpathy`), one file for all splits (also dataset_flickr8k/30k.json):
    {"images": [{"filepath": "val2014", "filename": "COCO_val2014_000000391895.jpg", "split": "test",
                 "imgid": 0, "sentences": [{"raw": "A man riding ...", "tokens": [...]}, ...]}, ...]}
  image paths: {data.root}/{data.images}/{filepath}/{filename}; data.<split> lists Karpathy split names
  (the usual train split is [train, restval]: 113,287 images; val and test 5,000 each).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..errors import ConfigError, DataError
from .samples import Sample, SkipReport, check_not_folder, no_samples


@dataclass
class CaptionedImage:
    where: str  # "file: image id N" for messages
    path: Path
    captions: list[str]


def normalize_caption(text: str, lowercase: bool) -> str:
    """Whitespace collapsed (COCO captions carry stray newlines and trailing spaces), optionally lowercased."""
    text = " ".join(str(text).split())
    return text.lower() if lowercase else text


def _load_json(path: Path, what: str) -> Any:
    check_not_folder(path, f"the {what} (JSON)", "Check data.root and the file names in the data config")
    if not path.is_file():
        raise DataError(f"{path}: {what} not found. Check data.root and the file names in the data config.")
    try:
        with open(path, encoding="utf-8") as f:
            return json.load(f)
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise DataError(f"{path}: not valid JSON ({e}); is the download complete?") from e


def _split_value(data_cfg, split: str) -> Any:
    value = data_cfg.get(split)
    if value in (None, ""):
        raise ConfigError(f"data.{split} is not set; give the {split} split of the {data_cfg.format} data")
    return value


def _image_folder(data_cfg, split: str) -> Path:
    """data.images: one folder for every split, or a mapping {split: folder}; relative to data.root."""
    images = data_cfg.get("images", ".")
    if images is not None and not isinstance(images, (str, Path)):
        if split not in images:
            raise ConfigError(f"data.images has no entry for split '{split}' (it has {', '.join(images)})")
        images = images[split]
    return Path(data_cfg.root) / (images or ".")


def read_coco_captions(data_cfg, split: str, skipped: SkipReport) -> list[Sample]:
    """COCO captions JSON of `split` ({data.root}/{data.<split>}) -> samples."""
    path = Path(data_cfg.root) / str(_split_value(data_cfg, split))
    data = _load_json(path, "COCO captions file")
    if not isinstance(data, dict) or not isinstance(data.get("images"), list) or not isinstance(data.get("annotations"), list):
        raise DataError(
            f"{path}: not a COCO captions file (expected a JSON object with lists `images` and `annotations`); "
            "for the Karpathy dataset_coco.json use data=karpathy"
        )
    folder = _image_folder(data_cfg, split)
    lowercase = bool(data_cfg.get("lowercase", False))
    images: dict[Any, CaptionedImage] = {}
    for number, entry in enumerate(data["images"]):
        if not isinstance(entry, dict) or "id" not in entry or "file_name" not in entry:
            raise DataError(f"{path}: images[{number}] lacks `id` or `file_name`: {str(entry)[:120]}")
        if entry["id"] in images:
            raise DataError(f"{path}: images[{number}]: image id {entry['id']} appears twice")
        images[entry["id"]] = CaptionedImage(f"{path}: image id {entry['id']}", folder / entry["file_name"], [])
    for number, ann in enumerate(data["annotations"]):
        if not isinstance(ann, dict) or "image_id" not in ann or "caption" not in ann:
            raise DataError(f"{path}: annotations[{number}] lacks `image_id` or `caption`: {str(ann)[:120]}")
        where = f"{path}: annotations[{number}] (id {ann.get('id', '?')})"
        image = images.get(ann["image_id"])
        if image is None:
            _reject(data_cfg, skipped, "caption of an unknown image id", where,
                    f"refers to image id {ann['image_id']}, which is not in `images`")
            continue
        caption = normalize_caption(ann["caption"], lowercase)
        if not caption:
            _reject(data_cfg, skipped, "empty caption", where, "empty caption")
            continue
        image.captions.append(caption)
    return _samples(data_cfg, split, list(images.values()), skipped, f"data.images ({folder})", path)


def read_karpathy(data_cfg, split: str, skipped: SkipReport) -> list[Sample]:
    """Images of the Karpathy splits listed in data.<split> (e.g. [train, restval]) -> samples."""
    path = Path(data_cfg.root) / str(data_cfg.get("annotations") or "dataset_coco.json")
    wanted = _split_value(data_cfg, split)
    wanted = {wanted} if isinstance(wanted, str) else set(wanted)
    data = _load_json(path, "Karpathy split file")
    if not isinstance(data, dict) or not isinstance(data.get("images"), list):
        raise DataError(f"{path}: not a Karpathy split file (expected a JSON object with a list `images`)")
    present = {str(entry.get("split")) for entry in data["images"] if isinstance(entry, dict)}
    if not wanted & present:
        raise ConfigError(
            f"data.{split}={sorted(wanted)}: no image of {path} is in these splits; the file has {', '.join(sorted(present))}"
        )
    folder = _image_folder(data_cfg, split)
    lowercase = bool(data_cfg.get("lowercase", False))
    images = []
    for number, entry in enumerate(data["images"]):
        if not isinstance(entry, dict) or "filename" not in entry or "split" not in entry:
            raise DataError(f"{path}: images[{number}] lacks `filename` or `split`: {str(entry)[:120]}")
        if entry["split"] not in wanted:
            continue
        captions = []
        for sentence in entry.get("sentences") or []:
            text = sentence.get("raw") if sentence.get("raw") is not None else " ".join(sentence.get("tokens") or [])
            if normalize_caption(text, lowercase):
                captions.append(normalize_caption(text, lowercase))
        where = f"{path}: images[{number}] (imgid {entry.get('imgid', '?')}, {entry['filename']})"
        images.append(CaptionedImage(where, folder / entry.get("filepath", "") / entry["filename"], captions))
    return _samples(data_cfg, split, images, skipped, f"data.images ({folder})", path)


def _reject(data_cfg, skipped: SkipReport, reason: str, where: str, problem: str) -> None:
    """An invalid entry: an error naming it, or (data.skip_invalid=true) counted and reported."""
    if not data_cfg.get("skip_invalid", False):
        raise DataError(f"{where}: {problem}. Fix the file, or set data.skip_invalid=true to skip such entries "
                        "(they are counted and reported)")
    skipped.add(reason, where)


def _missing_images(images: list[CaptionedImage]) -> tuple[list[CaptionedImage], list[CaptionedImage]]:
    """(images whose path is not there, images whose path is a folder): neither is an image file."""
    absent = [image for image in images if not image.path.is_file()]
    folders = [image for image in absent if image.path.is_dir()]
    folder_ids = {id(image) for image in folders}
    return [image for image in absent if id(image) not in folder_ids], folders


def _samples(data_cfg, split: str, images: list[CaptionedImage], skipped: SkipReport, folder_key: str,
             annotations: Path) -> list[Sample]:
    entries = len(images)
    if data_cfg.get("check_files", True):
        missing, folders = _missing_images(images)
        if folders and not data_cfg.get("skip_invalid", False):
            raise DataError(
                f"{folders[0].where}: {folders[0].path} is a folder, not an image file ({len(folders)} such). Check "
                f"data.root and {folder_key}, or set data.skip_invalid=true to skip them (counted and reported)"
            )
        if missing and not data_cfg.get("skip_invalid", False):
            examples = ", ".join(str(image.path) for image in missing[:3])
            raise DataError(
                f"{missing[0].where}: image file {missing[0].path} not found ({len(missing)} of {len(images)} "
                f"images of split '{split}' are missing, e.g. {examples}). Check data.root and {folder_key}, or set "
                "data.skip_invalid=true to skip them (counted and reported)"
            )
        for reason, bad in (("image file not found", missing), ("image path is a folder", folders)):
            for image in bad:
                skipped.add(reason, f"{image.where} -> {image.path}")
        gone = {id(image) for image in missing + folders}
        images = [image for image in images if id(image) not in gone]
    samples = []
    for image in images:
        if not image.captions:
            _reject(data_cfg, skipped, "image without captions", image.where, "image without any caption")
            continue
        if split == "train":  # every caption is a training example
            samples += [Sample({"src": str(image.path)}, caption, f"{image.where} caption {i + 1}", image.captions)
                        for i, caption in enumerate(image.captions)]
        else:  # one example per image, scored against all its captions
            samples.append(Sample({"src": str(image.path)}, image.captions[0], image.where, image.captions))
    if not samples:
        raise no_samples(split, str(annotations), f"images with captions ({data_cfg.format} format)", entries, skipped)
    return samples
