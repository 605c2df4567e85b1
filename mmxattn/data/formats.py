"""The built-in data formats, registered through the `mmxattn.data_formats` entry-point group exactly as a
plugin registers its own (pyproject.toml), and chosen by `data.format=<name>`."""

from __future__ import annotations

from ..registry import DataFormat
from .captions import read_coco_captions, read_karpathy
from .multisource import read_multisource_tsv
from .parallel_text import read_parallel_text
from .speech import read_speech_tsv

parallel_text = DataFormat(read_parallel_text)  # train.en / train.de ...: one sample per line pair
speech_tsv = DataFormat(read_speech_tsv, manifest=".tsv")  # fairseq speech-to-text manifests
coco = DataFormat(read_coco_captions)  # COCO captions JSON + an image folder per split
karpathy = DataFormat(read_karpathy)  # Karpathy's dataset_coco.json with its splits
multisource_tsv = DataFormat(read_multisource_tsv, manifest=".tsv")  # a column per source, files or text
