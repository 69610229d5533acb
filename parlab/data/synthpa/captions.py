"""Captions of SynthPA people: the dataset's one caption per image, and a varied caption corpus.

Every caption comes with its *claims*, an (A,) int8 vector over
:data:`ATTRIBUTES`: +1 the caption says the attribute is present, -1 it says
it is absent, 0 it says nothing. A caption is true of an image when every
claim agrees with the image's labels (:func:`truth`), which is what the CLIP
pretraining uses as its targets: identical captions, and differently worded
ones that say the same, are positives for each other's images, not negatives.

- :func:`full_caption` describes a person completely and compactly (gender,
  age, view, what they wear, carry and hold); anything not named is absent,
  so its claims are the whole label vector. ``captions.tsv`` holds these, and
  image-to-text retrieval is scored on them.
- :func:`corpus_caption` draws one of three kinds: a full caption; a partial
  one naming a few present attributes and negating a few absent ones in
  varied words and order ("A person carrying a backpack and without a hat");
  or an attribute's own sentence (:func:`parlab.data.sentences.sentence_for`)
  or its negation (:func:`negate`), the pair zero-shot recognition compares.
  Each comes with a hard negative: the same words with one claim flipped.
"""

from __future__ import annotations

import re

import numpy as np

from parlab.data.sentences import sentence_for
from parlab.data.synthpa.network import ATTRIBUTES

_INDEX = {a: i for i, a in enumerate(ATTRIBUTES)}
# What a person is seen wearing / carrying, as the noun phrases of a caption.
WORN = {"Hat": "a hat", "Glasses": "glasses", "ShortSleeve": "short sleeves", "LongSleeve": "long sleeves",
        "UpperStride": "a striped top", "UpperLogo": "a top with a logo", "UpperPlaid": "a plaid top",
        "UpperSplice": "a spliced top", "LowerStripe": "striped bottoms", "LowerPattern": "patterned bottoms",
        "LongCoat": "a long coat", "Trousers": "trousers", "Shorts": "shorts", "Skirt&Dress": "a skirt or a dress",
        "boots": "boots"}
CARRIED = {"HandBag": "a handbag", "ShoulderBag": "a shoulder bag", "Backpack": "a backpack"}
AGES = {"AgeLess18": "young", "Age18-60": "adult", "AgeOver60": "elderly"}
VIEWS = {"Front": "the front", "Side": "the side", "Back": "the back"}
_SINGLE = [_INDEX[name] for name in (*AGES, *VIEWS)]
SUBJECTS = ("A pedestrian", "A person", "Someone", "A photo of a pedestrian", "A walking person")


def negate(sentence: str) -> str:
    """A negated attribute sentence: "A pedestrian wearing a hat" -> "A pedestrian not wearing a hat",
    "A female pedestrian" -> "A pedestrian who is not female"."""
    match = re.match(r"^(An?) pedestrian (.+)$", sentence)
    if match:
        return f"A pedestrian not {match.group(2)}"
    match = re.match(r"^An? (\w+) pedestrian(.*)$", sentence)
    if match:
        return f"A pedestrian who is not {match.group(1)}{match.group(2)}"
    return f"Not {sentence[:1].lower()}{sentence[1:]}"


def _article(word: str) -> str:
    return "An" if word[:1].lower() in "aeiou" else "A"


def _listing(items: list[str]) -> str:
    return items[0] if len(items) == 1 else ", ".join(items[:-1]) + " and " + items[-1]


def _on(y: np.ndarray, name: str) -> bool:
    return bool(y[_INDEX[name]] == 1)


def full_caption(y: np.ndarray) -> str:
    """The complete caption of labels ``y`` (A,): "An adult woman seen from the side, wearing short sleeves,
    a plaid top and trousers, carrying a handbag."."""
    age = next((word for name, word in AGES.items() if _on(y, name)), "")
    noun = "woman" if _on(y, "Female") else "man"
    subject = f"{age} {noun}".strip()
    text = f"{_article(subject)} {subject}"
    view = next((where for name, where in VIEWS.items() if _on(y, name)), None)
    if view:
        text += f" seen from {view}"
    parts = []
    worn = [phrase for name, phrase in WORN.items() if _on(y, name)]
    if worn:
        parts.append("wearing " + _listing(worn))
    carried = [phrase for name, phrase in CARRIED.items() if _on(y, name)]
    if carried:
        parts.append("carrying " + _listing(carried))
    if _on(y, "HoldObjectsInFront"):
        parts.append("holding something in front")
    return text + ("" if not parts else ", " + ", ".join(parts)) + "."


def _clause(name: str, present: bool, rng: np.random.Generator) -> str:
    """One claim about attribute ``name`` in words, for a partial caption.

    Draws the same random numbers whatever ``present``, so that a caption and its hard negative (one claim
    flipped) differ only in that claim's words.
    """
    without = rng.random() < 0.5
    if name in WORN or name in CARRIED:
        verb, phrase = ("wearing", WORN[name]) if name in WORN else ("carrying", CARRIED[name])
        if present:
            return f"{verb} {phrase}"
        return f"without {phrase}" if without else f"not {verb} {phrase}"
    if name in VIEWS:
        return f"{'' if present else 'not '}seen from {VIEWS[name]}"
    if name in AGES:
        return f"who is {'' if present else 'not '}{AGES[name]}"
    if name == "HoldObjectsInFront":
        return "holding something in front" if present else "not holding anything in front"
    return f"who is {'' if present else 'not '}female"


def _weights(y: np.ndarray, candidates: np.ndarray, prevalence: np.ndarray | None) -> np.ndarray | None:
    """Choice probabilities of ``candidates`` (attribute indices): 1 / how common the image's value of each is."""
    if prevalence is None or len(candidates) == 0:
        return None
    common = np.where(y[candidates] == 1, prevalence[candidates], 1 - prevalence[candidates])
    weight = 1 / np.clip(common, 1e-3, None)
    return weight / weight.sum()


def _partial_claims(y: np.ndarray, rng: np.random.Generator, prevalence: np.ndarray | None) -> np.ndarray:
    """1 to 5 claims: present attributes (60% on average) and absent ones, in a random order (-> (k,) indices)."""
    k = int(rng.integers(1, 6))
    present, absent = np.flatnonzero(y == 1), np.flatnonzero(y == 0)
    n_present = min(int(rng.binomial(k, 0.6)), len(present))
    n_absent = min(k - n_present, len(absent))
    chosen = np.concatenate([rng.choice(present, n_present, replace=False, p=_weights(y, present, prevalence)),
                             rng.choice(absent, n_absent, replace=False, p=_weights(y, absent, prevalence))])
    rng.shuffle(chosen)
    return chosen


def _describe(kind: str, order: np.ndarray, claims: np.ndarray, rng: np.random.Generator) -> str:
    """The words of ``claims`` (A,) for a caption of ``kind``; ``order``: the claimed attributes, in order."""
    if kind == "full":
        return full_caption((claims == 1).astype(np.uint8))
    if kind == "sentence":
        sentence = sentence_for(ATTRIBUTES[order[0]])
        return sentence if claims[order[0]] == 1 else negate(sentence)
    subject, clauses = SUBJECTS[int(rng.integers(len(SUBJECTS)))], []
    for a in order:
        name, here = ATTRIBUTES[a], bool(claims[a] == 1)
        in_subject, wording = rng.random() < 0.7, rng.random() < 0.5
        if name == "Female" and in_subject:  # gender in the subject rather than a clause
            subject = f"A {'woman' if here else 'man'}" if wording else f"A {'female' if here else 'male'} pedestrian"
        else:
            clauses.append(_clause(name, here, rng))
    return (f"{subject} {_listing(clauses)}" if clauses else subject) + "."


def corpus_caption(y: np.ndarray, rng: np.random.Generator, full: float = 0.4, sentence: float = 0.2,
                   prevalence: np.ndarray | None = None) -> tuple[tuple[str, np.ndarray], tuple[str, np.ndarray]]:
    """A caption of labels ``y`` (A,) and its hard negative, each as (text, claims (A,)).

    The caption is complete with probability ``full``, an attribute sentence or its negation with probability
    ``sentence``, else partial (see the module docstring). The hard negative says the same in the same words
    but for one claim, flipped ("without a hat" for "wearing a hat"): false of this image, and what teaches a
    CLIP a sentence from its negation (NegCLIP's hard negatives, Yuksekgonul et al., 2023).

    ``prevalence`` (A,), the share of the corpus with each attribute, balances the claims: an attribute is
    chosen with a weight of 1 / the share of people with the image's value of it, so that over the corpus an
    attribute's sentence is said nearly as often as its negation (on SynthPA, sentence-to-negation ratios of
    0.2 to 1.7 per attribute, against 0.01 to 16 with a uniform choice: the sentence of a rare attribute is
    then almost never true). None: uniform choice.
    """
    u = rng.random()
    kind = "full" if u < full else "sentence" if u < full + sentence else "partial"
    if kind == "full":
        # The flipped claim is first: one the caption words on its own (an age or a view is one of a group,
        # which a complete caption names once).
        order = rng.permutation(len(ATTRIBUTES))
        order = np.concatenate([order[np.isin(order, _SINGLE, invert=True)], order[np.isin(order, _SINGLE)]])
    elif kind == "sentence":
        order = rng.choice(len(ATTRIBUTES), size=1, p=_weights(y, np.arange(len(ATTRIBUTES)), prevalence))
    else:
        order = _partial_claims(y, rng, prevalence)
    claims = np.zeros(len(ATTRIBUTES), np.int8)
    claims[order] = np.where(y[order] == 1, 1, -1)
    flipped = claims.copy()
    flipped[order[0]] = -flipped[order[0]]
    wording = int(rng.integers(2**32))  # the same words for both, but for the flipped claim
    return ((_describe(kind, order, claims, np.random.default_rng(wording)), claims),
            (_describe(kind, order, flipped, np.random.default_rng(wording)), flipped))


def truth(labels: np.ndarray, claims: np.ndarray) -> np.ndarray:
    """(N, M) bool: caption j (claims ``claims[j]``, (M, A)) is true of image i (labels ``labels[i]``, (N, A))."""
    sign = np.where(labels == 1, 1, -1).astype(np.int8)
    agree = (claims[None] == 0) | (claims[None] == sign[:, None])
    return agree.all(-1)
