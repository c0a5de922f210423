"""Write the JSONL data of blt's local lm-evaluation-harness tasks (character-level and cloze).

    python tools/make_char_tasks.py --data-dir ../shared/data --out blt/evaluation/tasks

Deterministic: the same corpora (checked against their sha256) give byte-identical files on every
machine and run. Randomness comes only from `random.Random` seeded with strings; vocabularies are
sorted before they are shuffled. Only small generated items are written, never the corpora.

WORDS come from the TRAIN splits (first 90% of the bytes) of dickens.txt and tinyshakespeare.txt:
lowercase ASCII words of 4-9 letters seen at least 5 times. The sorted vocabulary is shuffled once;
its first DEMO_POOL words serve only as demonstrations and the rest only as test items.

CHARACTER TASKS (after CUTE, Edman et al. 2024), one JSONL file each, read by the harness both as a
generation task and as a multiple-choice task. Each prompt holds 3 fixed demonstrations (the same
for every item of a task), then the question:

    Spell out the word "garden".
    Answer: g a r d e n
    <two more demonstrations, blank-line separated>

    Spell out the word "house".
    Answer:

The answer follows after one space and a newline ends it. Fields: id, word, args (the operation's
parameters), prompt, answer, choices (the answer and 3 distractors made by applying the operation
wrongly, shuffled), label (index of the answer in choices).

CLOZE (after HellaSwag and the BLT paper's noised HellaSwag), from HELD-OUT text so that models
trained on the train splits have not seen it: dickens.txt's test split (last 5%) and
tinyshakespeare.txt's validation split (last 10%). A passage and its true next sentence (Dickens) or
verse line (Shakespeare) against 3 others of similar length from elsewhere in the same held-out text.
Choices carry their own leading separator (" " or "\n"). Each context also comes noised, choices
kept clean: random_case (each letter's case flipped with probability 0.5) and repeat (each
character but newlines, with probability 0.2, written 2 to 4 times in all).
"""
from __future__ import annotations

import argparse
import hashlib
import json
import random
import re
import string
from collections import Counter
from pathlib import Path

SEED = "blt-char-tasks-v1"
SHA256 = {
    "dickens.txt": "b24c37886142e11d0ee687db6ab06f936207aa7f2ea1fd1d9a36763c7a507e6a",
    "tinyshakespeare.txt": "86c4e6aa9db7c042ec79f339dcb96d42b0075e16b8fc2e86bf0ca57e2dc565ed",
}
N_CHAR_ITEMS = 150  # per character task
N_CLOZE_ITEMS = 200  # half Dickens, half Shakespeare, interleaved
N_DEMOS, DEMO_POOL = 3, 40
MIN_LEN, MAX_LEN, MIN_COUNT = 4, 9, 5
LETTERS = string.ascii_lowercase
WORD = re.compile(r"(?<![A-Za-z'-])[a-z]+(?![A-Za-z'-])")  # whole lowercase words only


def read_split(data_dir: Path, name: str, lo: float, hi: float) -> str:
    """Bytes [int(n*lo), int(n*hi)) of a shared corpus (the project's split rule), as text."""
    data = (data_dir / name).read_bytes()
    if hashlib.sha256(data).hexdigest() != SHA256[name]:
        raise SystemExit(f"{data_dir / name} is not the expected file (sha256 differs)")
    n = len(data)
    return data[int(n * lo) : int(n * hi)].decode("utf-8", errors="replace").replace("\r\n", "\n")


def word_pools(texts: list[str]) -> tuple[list[str], list[str]]:
    """(demonstration words, test words): disjoint, from one seeded shuffle of the vocabulary."""
    counts = Counter(w for text in texts for w in WORD.findall(text))
    vocab = sorted(w for w, c in counts.items() if c >= MIN_COUNT and MIN_LEN <= len(w) <= MAX_LEN)
    random.Random(f"{SEED}:vocab").shuffle(vocab)
    return vocab[:DEMO_POOL], vocab[DEMO_POOL:]


def ordinal(n: int) -> str:
    return f"{n}{'th' if 10 <= n % 100 <= 20 else {1: 'st', 2: 'nd', 3: 'rd'}.get(n % 10, 'th')}"


def swapped(w: str, i: int, j: int) -> str:
    s = list(w)
    s[i], s[j] = s[j], s[i]
    return "".join(s)


def last_only(w: str, old: str, new: str) -> str:
    k = w.rfind(old)
    return w[:k] + new + w[k + 1 :]


def other_letter(rng: random.Random, avoid: str) -> str:
    return rng.choice([c for c in LETTERS if c not in avoid])


# Each operation: (word, rng) -> (question, answer, args, wrong answers[, spares]) or None if the
# word does not suit it. Wrong answers are the operation applied wrongly (wrong place, wrong letter,
# only once, ...); spares are used only when fewer than 3 distinct wrong answers exist. Distractors
# as long as the answer are preferred (make_item), so that a choice's length does not give it away.
def op_spell(w, rng):
    i, k = rng.sample(range(len(w)), 2)
    j, m = rng.sample(range(len(w) - 1), 2)
    wrong = [swapped(w, j, j + 1), swapped(w, m, m + 1), w[:i] + other_letter(rng, w[i]) + w[i + 1 :],
             w[:k] + other_letter(rng, w[k]) + w[k + 1 :], w[:i] + w[i + 1 :], w[:i] + w[i] + w[i:]]
    return f'Spell out the word "{w}".', " ".join(w), {}, [" ".join(x) for x in wrong]


def op_reverse(w, rng):
    r = w[::-1]
    if r == w:
        return None
    k = rng.randrange(len(w) - 1)
    wrong = [w, w[0] + w[:0:-1], w[-2::-1] + w[-1], swapped(r, k, k + 1)]  # unreversed, an end kept, slip
    return f'Write the word "{w}" backwards.', r, {}, wrong


def op_insert(w, rng):
    c, x = rng.choice(sorted(set(w))), other_letter(rng, w)
    d = rng.choice(sorted(set(w) - {c})) if len(set(w)) > 1 else c
    y = other_letter(rng, w + x)
    wrong = [w.replace(c, x + c), w.replace(c, c + y), w.replace(d, d + x), w.replace(c, c + x, 1),
             last_only(w, c, c + x), w]  # before, wrong letter, after the wrong letter, once, nothing
    question = f'Add the letter "{x}" after every "{c}" in "{w}".'
    return question, w.replace(c, c + x), {"letter": c, "new": x}, wrong


def op_delete(w, rng):
    c = rng.choice(sorted(set(w)))
    d = rng.choice(sorted(set(w) - {c})) if len(set(w)) > 1 else c
    k = w.index(c)
    before, after = (k - 1 if k else k + 1), (k + 1 if k + 1 < len(w) else k - 1)
    wrong = [w[:before] + w[before + 1 :], w[:after] + w[after + 1 :],  # a neighbour of the first one
             w.replace(d, ""), w.replace(c, "", 1), last_only(w, c, ""), w]  # wrong letter, once, nothing
    return f'Delete every "{c}" from "{w}".', w.replace(c, ""), {"letter": c}, wrong


def op_substitute(w, rng):
    c, x = rng.choice(sorted(set(w))), other_letter(rng, w)
    d = rng.choice(sorted(set(w) - {c})) if len(set(w)) > 1 else c
    y = other_letter(rng, w + x)
    wrong = [w.replace(c, x, 1), last_only(w, c, x), w.replace(d, x), w.replace(c, y),
             w.replace(c, c + x), w]  # once (first, last), wrong letter replaced or put in, added, nothing
    question = f'Replace every "{c}" with "{x}" in "{w}".'
    return question, w.replace(c, x), {"letter": c, "new": x}, wrong


def op_swap(w, rng):
    n = len(w)
    pairs = [(i, j) for i in range(n) for j in range(i + 1, n) if w[i] != w[j]]
    if not pairs:
        return None
    i, j = rng.choice(pairs)
    wrong = [w]
    if i >= 1:
        wrong.append(swapped(w, i - 1, j - 1))  # positions counted from 0, not 1
    if j + 1 < n:
        wrong.append(swapped(w, i + 1, j + 1))
    if j != i + 1:
        wrong.append(swapped(w, i, i + 1))  # neighbours swapped instead
    wrong.append(w[:i] + w[i + 1 : j + 1] + w[i] + w[j + 1 :])  # letter moved instead of swapped
    question = f'Swap the {ordinal(i + 1)} and {ordinal(j + 1)} letters of "{w}".'
    return question, swapped(w, i, j), {"i": i + 1, "j": j + 1}, wrong


def op_ith_letter(w, rng):
    n, i = len(w), rng.randrange(len(w))
    wrong = [w[i - 1] if i else w[-1], w[(i + 1) % n], w[n - 1 - i], w[0], w[-1]]  # off by one, ...
    spares = sorted(set(w)) + rng.sample(LETTERS, len(LETTERS))  # the word's other letters first
    return f'What is the {ordinal(i + 1)} letter of "{w}"?', w[i], {"i": i + 1}, wrong, spares


CHAR_TASKS = {"spell": op_spell, "reverse": op_reverse, "insert": op_insert, "delete": op_delete,
              "substitute": op_substitute, "swap": op_swap, "ith_letter": op_ith_letter}


def make_item(op, word: str, rng: random.Random) -> dict | None:
    made = op(word, rng)
    if made is None:
        return None
    question, answer, args, wrong, *spares = made
    wrong = [x for x in dict.fromkeys(wrong) if x and x != answer]  # ordered, distinct
    if len(wrong) >= 3:
        same = [x for x in wrong if len(x) == len(answer)]
        if len(same) >= 3:
            wrong = rng.sample(same, 3)
        else:
            wrong = same + rng.sample([x for x in wrong if x not in same], 3 - len(same))
    else:
        spares = [x for x in dict.fromkeys(spares[0] if spares else [])
                  if x != answer and x not in wrong]
        if len(wrong) + len(spares) < 3:
            return None
        wrong += spares[: 3 - len(wrong)]
    choices = [answer] + wrong
    rng.shuffle(choices)
    return {"word": word, "args": args, "question": question, "answer": answer,
            "choices": choices, "label": choices.index(answer)}


def take_items(op, words: list[str], n: int, rng: random.Random) -> list[dict]:
    out = []
    for w in rng.sample(words, len(words)):
        item = make_item(op, w, rng)
        if item is not None:
            out.append(item)
            if len(out) == n:
                return out
    raise RuntimeError(f"only {len(out)} of {n} items could be made")


def char_task(name: str, demo_words: list[str], test_words: list[str]) -> list[dict]:
    op = CHAR_TASKS[name]
    demos = take_items(op, demo_words, N_DEMOS, random.Random(f"{SEED}:{name}:demos"))
    shots = "".join(f"{d['question']}\nAnswer: {d['answer']}\n\n" for d in demos)
    rows = []
    for k, it in enumerate(take_items(op, test_words, N_CHAR_ITEMS, random.Random(f"{SEED}:{name}"))):
        rows.append({"id": f"{name}-{k:03d}", "word": it["word"], "args": it["args"],
                     "prompt": f"{shots}{it['question']}\nAnswer:", "answer": it["answer"],
                     "choices": it["choices"], "label": it["label"]})
    return rows


# ---------------------------------------------------------------- cloze
SENT_END = re.compile(r"[.!?]['\"]?(?=\s+['\"]?[A-Z])")
ABBREV = {"Mr", "Mrs", "Dr", "St", "Messrs", "Esq", "Capt", "Col", "Rev", "No", "Mme"}
SPEAKER = re.compile(r"[A-Z][A-Za-z' ]*:")
NEAREST = 16  # cloze distractors: drawn from the 16 sentences (lines) closest in length to the answer


def sentences(par: str) -> list[str]:
    out, start = [], 0
    for m in SENT_END.finditer(par):
        before = par[start : m.start()].split()
        last = before[-1].lstrip("'\"(") if before else ""
        if par[m.start()] == "." and (last in ABBREV or (len(last) == 1 and last.isupper())):
            continue  # "Mr. Pickwick", "J. Smith"
        out.append(par[start : m.end()].strip())
        start = m.end()
    out.append(par[start:].strip())
    return [s for s in out if s]


def dickens_units(text: str) -> list[list[str]]:
    """Paragraphs (whole ones, ASCII, not headings) as lists of sentences."""
    text = re.sub(r"(?<=[a-z])-\n(?=[a-z])", "-", text)  # "a-\nworking": a hyphen at a line end
    paras = [" ".join(p.split()) for p in text.split("\n\n")[1:-1]]
    return [sentences(p) for p in paras if p.isascii() and not p.isupper() and "*" not in p]


def shakespeare_units(text: str) -> list[list[str]]:
    """Speeches (whole ones) as [speaker line, verse line, ...]."""
    blocks = [b.split("\n") for b in text.split("\n\n")[1:-1]]
    return [b for b in blocks if SPEAKER.fullmatch(b[0]) and len(b) >= 2]


def cloze_candidates(units, source: str):
    """(unit index, context, gold) for every usable position."""
    out = []
    for u, unit in enumerate(units):
        if source == "dickens":  # the 2 to 6 sentences before the gold one, at least 150 characters
            for g in range(2, len(unit)):
                contexts = [" ".join(unit[g - k : g]) for k in range(2, min(g, 6) + 1)]
                ctx = next((c for c in contexts if len(c) >= 150), "")
                if ctx and len(ctx) <= 700 and 30 <= len(unit[g]) <= 200:
                    out.append((u, ctx, unit[g]))
        else:  # the speech so far, speaker line included; gold is its 3rd to 7th verse line
            for g in range(3, min(len(unit), 8)):
                if len(unit[g]) >= 20:
                    out.append((u, "\n".join(unit[:g]), unit[g]))
    return out


def cloze_items(units, source: str, n: int, rng: random.Random) -> list[dict]:
    sep = " " if source == "dickens" else "\n"
    body = (lambda unit: unit) if source == "dickens" else (lambda unit: unit[1:])  # no speaker lines
    pool = sorted({(u, s) for u, unit in enumerate(units) for s in body(unit) if len(s) >= 20})
    cands = cloze_candidates(units, source)
    rng.shuffle(cands)
    used, items = set(), []
    for u, ctx, gold in cands:
        if u in used:
            continue
        others = sorted({s for v, s in pool if v != u and s != gold},
                        key=lambda s: (abs(len(s) - len(gold)), s))
        if len(others) < NEAREST:
            continue
        used.add(u)
        choices = [gold] + rng.sample(others[:NEAREST], 3)  # 3 of the NEAREST closest in length
        rng.shuffle(choices)
        items.append({"source": source, "context": ctx, "choices": [sep + c for c in choices],
                      "label": choices.index(gold)})
        if len(items) == n:
            return items
    raise RuntimeError(f"only {len(items)} of {n} {source} cloze items could be made")


def random_case(text: str, rng: random.Random, p: float = 0.5) -> str:
    return "".join(c.swapcase() if c in string.ascii_letters and rng.random() < p else c for c in text)


def repeat_chars(text: str, rng: random.Random, p: float = 0.2, most: int = 4) -> str:
    return "".join(c * rng.randint(2, most) if c != "\n" and rng.random() < p else c for c in text)


def cloze_task(dickens_heldout: str, shakespeare_heldout: str) -> list[dict]:
    half = N_CLOZE_ITEMS // 2
    d = cloze_items(dickens_units(dickens_heldout), "dickens", half, random.Random(f"{SEED}:cloze:dickens"))
    s = cloze_items(shakespeare_units(shakespeare_heldout), "shakespeare", half,
                    random.Random(f"{SEED}:cloze:shakespeare"))
    rows = []
    for k, it in enumerate(x for pair in zip(d, s) for x in pair):  # interleaved: --limit gets both
        rid, ctx = f"cloze-{k:03d}", it["context"]
        rows.append({"id": rid, "source": it["source"], "context": ctx,
                     "context_random_case": random_case(ctx, random.Random(f"{SEED}:{rid}:case")),
                     "context_repeat": repeat_chars(ctx, random.Random(f"{SEED}:{rid}:repeat")),
                     "choices": it["choices"], "label": it["label"]})
    return rows


def write_jsonl(path: Path, rows: list[dict]) -> None:
    with open(path, "w", encoding="utf-8", newline="\n") as f:
        for row in rows:
            f.write(json.dumps(row, ensure_ascii=True) + "\n")


def generate(data_dir: Path, out: Path) -> dict[str, int]:
    """Write every task's JSONL into `out`; returns {file name: number of items}."""
    dickens_train = read_split(data_dir, "dickens.txt", 0.0, 0.9)
    shakespeare_train = read_split(data_dir, "tinyshakespeare.txt", 0.0, 0.9)
    demo_words, test_words = word_pools([dickens_train, shakespeare_train])
    files = {f"{name}.jsonl": char_task(name, demo_words, test_words) for name in CHAR_TASKS}
    files["cloze.jsonl"] = cloze_task(read_split(data_dir, "dickens.txt", 0.95, 1.0),
                                      read_split(data_dir, "tinyshakespeare.txt", 0.9, 1.0))
    out.mkdir(parents=True, exist_ok=True)
    for name, rows in files.items():
        write_jsonl(out / name, rows)
    return {name: len(rows) for name, rows in files.items()}


def main(argv: list[str] | None = None) -> None:
    root = Path(__file__).resolve().parents[1]
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data-dir", type=Path, default=root.parent / "shared" / "data",
                    help="directory holding dickens.txt and tinyshakespeare.txt (default: ../shared/data)")
    ap.add_argument("--out", type=Path, default=root / "blt" / "evaluation" / "tasks")
    args = ap.parse_args(argv)
    for name, n in generate(args.data_dir, args.out).items():
        print(f"{name:20s} {n:4d} items {(args.out / name).stat().st_size:8,d} bytes")


if __name__ == "__main__":
    main()
