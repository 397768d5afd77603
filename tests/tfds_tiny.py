"""Build a tiny gsm8k TFDS dataset from local JSONL rows and read it back through jaxgrpo.

Run as a subprocess by test_tfds.py so TensorFlow never loads into the main test process:
    python tfds_tiny.py DATA_DIR ROWS.jsonl
Prints the examples jaxgrpo.data.make_source reads, as JSON.
"""

import dataclasses
import json
import sys

from tensorflow_datasets.text.gsm8k import gsm8k

from jaxgrpo.tasks.sources import make_source
from jaxgrpo.train.config import DataSpec


def main(data_dir: str, rows: str) -> None:
  class LocalGsm8k(gsm8k.Gsm8k, skip_registration=True):
    """The official builder (same name, version, features), fed from a local file."""

    name = "gsm8k"

    def _split_generators(self, dl_manager):
      return {"train": self._generate_examples(rows)}

  LocalGsm8k(data_dir=data_dir).download_and_prepare()
  spec = DataSpec(source="tfds", tfds_name="gsm8k", path=data_dir, seed=0)
  source = make_source(spec)  # tfds.load("gsm8k", data_dir=..., download=False) inside
  n = len(source)
  print(json.dumps({"n": n, "examples": [dataclasses.asdict(source[i]) for i in range(n)]}))


if __name__ == "__main__":
  main(sys.argv[1], sys.argv[2])
