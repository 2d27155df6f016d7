"""Held-out English for a prose run: the clean sentences (5-20 words) of the descriptions of the Debian
packages installed on this machine, with every sentence of the ``prose`` corpus removed, written one per line
to OUT. A second file, OUT with ``-known`` before its suffix, keeps the sentences whose words all occur in the
corpus: reconstruction there shows what the model does with words it has seen.

    python examples/heldout_english.py heldout_en.txt
    t5vae eval prose-run --lines heldout_en.txt --max-lines 400
    t5vae eval prose-run --lines heldout_en-known.txt

The set depends on what is installed (a desktop has more packages than a container); record its size.
"""

import argparse
from pathlib import Path

from t5vae import files, sentences


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("out", type=Path)
    p.add_argument("--min-words", type=int, default=5)
    p.add_argument("--max-words", type=int, default=20)
    p.add_argument("--status", default="/var/lib/dpkg/status", help="dpkg's status file")
    args = p.parse_args()
    corpus = sentences.prose_corpus()
    seen = set(corpus)
    vocabulary = {w for s in corpus for w in sentences.words(s)}
    held = [
        s
        for s in sentences.clean_sentences(
            sentences.package_descriptions(args.status), args.min_words, args.max_words
        )
        if s not in seen
    ]
    if not held:
        raise SystemExit(f"error: no package descriptions in {args.status}")
    known = [s for s in held if set(sentences.words(s)) <= vocabulary]
    known_out = args.out.with_name(f"{args.out.stem}-known{args.out.suffix}")
    for path, lines in ((args.out, held), (known_out, known)):
        with files.atomic_file(path, "w") as f:
            f.writelines(s + "\n" for s in lines)
        print(f"{path}: {len(lines)} sentences")


if __name__ == "__main__":
    main()
