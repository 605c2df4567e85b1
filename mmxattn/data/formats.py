"""The built-in data formats, registered through the `mmxattn.data_formats` entry-point group exactly as a
plugin registers its own (pyproject.toml), and chosen by `data.format=<name>`. The guesses let `mmx-data DIR`
recognise a folder; the narrower formats are tried first (`guess_order`)."""

from __future__ import annotations

from ..registry import DataFormat
from .captions import read_coco_captions, read_karpathy
from .format_guesses import guess_coco, guess_karpathy, guess_multisource_tsv, guess_parallel_text, guess_speech_tsv
from .multisource import read_multisource_tsv
from .parallel_text import read_parallel_text
from .speech import read_speech_tsv

# fairseq speech-to-text manifests
speech_tsv = DataFormat(read_speech_tsv, manifest=".tsv", guess=guess_speech_tsv, guess_order=10)
# a column per source, files or text (any .tsv with a header, so after speech_tsv)
multisource_tsv = DataFormat(read_multisource_tsv, manifest=".tsv", guess=guess_multisource_tsv, guess_order=20)
# Karpathy's dataset_coco.json with its splits
karpathy = DataFormat(read_karpathy, guess=guess_karpathy, guess_order=30)
# COCO captions JSON + an image folder per split
coco = DataFormat(read_coco_captions, guess=guess_coco, guess_order=40)
# train.en / train.de ...: one sample per line pair
parallel_text = DataFormat(read_parallel_text, guess=guess_parallel_text, guess_order=50)
