"""Held-out English for a prose run: the clean sentences (5-20 words) of the descriptions of the Debian
packages installed on this machine, or with ``--fortunes`` of the fortune files (``apt-get install fortunes``:
quotations from literature, speeches and people), with every sentence of the ``prose`` corpus removed,
written one per line to OUT. A second file, OUT with ``-known`` before its suffix, keeps the sentences whose
words all occur in the corpus: reconstruction there shows what the model does with words it has seen.

    python examples/heldout_english.py heldout_en.txt
    t5vae eval prose-run --lines heldout_en.txt --max-lines 400
    t5vae eval prose-run --lines heldout_en-known.txt
    python examples/heldout_english.py heldout_fortunes.txt --fortunes
    t5vae eval prose-run --lines heldout_fortunes.txt --max-lines 1000

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
    p.add_argument(
        "--fortunes",
        nargs="?",
        const=sentences.FORTUNES,
        metavar="DIR",
        help=f"the fortune files under DIR (default {sentences.FORTUNES}) instead of package descriptions",
    )
    args = p.parse_args()
    corpus = sentences.prose_corpus()
    seen = set(corpus)
    vocabulary = {w for s in corpus for w in sentences.words(s)}
    texts = (
        sentences.fortunes(args.fortunes) if args.fortunes else sentences.package_descriptions(args.status)
    )
    held = [s for s in sentences.clean_sentences(texts, args.min_words, args.max_words) if s not in seen]
    if not held:
        source = (
            f"fortune files in {args.fortunes}" if args.fortunes else f"package descriptions in {args.status}"
        )
        raise SystemExit(f"error: no {source}")
    known = [s for s in held if set(sentences.words(s)) <= vocabulary]
    known_out = args.out.with_name(f"{args.out.stem}-known{args.out.suffix}")
    for path, lines in ((args.out, held), (known_out, known)):
        with files.atomic_file(path, "w") as f:
            f.writelines(s + "\n" for s in lines)
        print(f"{path}: {len(lines)} sentences")


if __name__ == "__main__":
    main()
