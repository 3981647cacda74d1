"""`latentseg targets [--json]`: the vocabulary of segmentation targets."""

from __future__ import annotations

import argparse
import json


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser("targets", help="list the segmentation targets (names, synonyms, kinds, codes)")
    p.add_argument("--json", action="store_true", help="machine-readable output")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from model.targets.vocabulary import default_vocabulary

    vocabulary = default_vocabulary()
    rows = [
        {
            "id": t.id,
            "name": t.name,
            "display": t.display,
            "kind": str(t.kind),
            "synonyms": list(t.synonyms),
            "snomed": None if t.code is None else {"value": t.code.value, "scheme": t.code.scheme, "meaning": t.code.meaning},
        }
        for t in vocabulary.targets
    ]
    if args.json:
        print(json.dumps({"targets": rows, "vocabulary_sha256": vocabulary.sha256()}, indent=2))
        return 0
    width = max(len(r["name"]) for r in rows)
    print(f"{'id':>3}  {'name':<{width}}  {'kind':<7}  synonyms")
    for r in rows:
        print(f"{r['id']:>3}  {r['name']:<{width}}  {r['kind']:<7}  {', '.join(r['synonyms'])}")
    return 0
