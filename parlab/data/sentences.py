"""One plain sentence per attribute, for vision-language models and captions.

Known attribute names (PA100k, PETA, RAP, UPAR, WIDER) have hand-written
sentences; any other name gets one built from its dataset prefix and its
camel-case words, so every reader can return sentences.
"""

from __future__ import annotations

import re

SENTENCES: dict[str, str] = {
    # PA100k (and SynthPA)
    "Hat": "A pedestrian wearing a hat",
    "Glasses": "A pedestrian wearing glasses",
    "ShortSleeve": "A pedestrian wearing a short-sleeved top",
    "LongSleeve": "A pedestrian wearing a long-sleeved top",
    "UpperStride": "A pedestrian wearing a top with stripes",
    "UpperLogo": "A pedestrian wearing a top with a logo",
    "UpperPlaid": "A pedestrian wearing a plaid top",
    "UpperSplice": "A pedestrian wearing a top spliced from different colours",
    "LowerStripe": "A pedestrian wearing trousers or a skirt with stripes",
    "LowerPattern": "A pedestrian wearing patterned trousers or a patterned skirt",
    "LongCoat": "A pedestrian wearing a long coat",
    "Trousers": "A pedestrian wearing trousers",
    "Shorts": "A pedestrian wearing shorts",
    "Skirt&Dress": "A pedestrian wearing a skirt or a dress",
    "boots": "A pedestrian wearing boots",
    "HandBag": "A pedestrian carrying a handbag",
    "ShoulderBag": "A pedestrian carrying a shoulder bag",
    "Backpack": "A pedestrian carrying a backpack",
    "HoldObjectsInFront": "A pedestrian holding objects in front",
    "AgeOver60": "A pedestrian over sixty years old",
    "Age18-60": "An adult pedestrian between eighteen and sixty",
    "AgeLess18": "A pedestrian under eighteen years old",
    "Female": "A female pedestrian",
    "Front": "A pedestrian seen from the front",
    "Side": "A pedestrian seen from the side",
    "Back": "A pedestrian seen from the back",
    # PETA (evaluated 35)
    "accessoryHat": "A pedestrian wearing a hat",
    "accessoryMuffler": "A pedestrian wearing a muffler",
    "accessoryNothing": "A pedestrian with no accessory",
    "accessorySunglasses": "A pedestrian wearing sunglasses",
    "hairLong": "A pedestrian with long hair",
    "upperBodyCasual": "A pedestrian wearing casual upper-body clothes",
    "upperBodyFormal": "A pedestrian wearing formal upper-body clothes",
    "upperBodyJacket": "A pedestrian wearing a jacket",
    "upperBodyLogo": "A pedestrian wearing a top with a logo",
    "upperBodyPlaid": "A pedestrian wearing a plaid top",
    "upperBodyShortSleeve": "A pedestrian wearing a short-sleeved top",
    "upperBodyThinStripes": "A pedestrian wearing a top with thin stripes",
    "upperBodyTshirt": "A pedestrian wearing a T-shirt",
    "upperBodyOther": "A pedestrian wearing another kind of top",
    "upperBodyVNeck": "A pedestrian wearing a V-neck top",
    "lowerBodyCasual": "A pedestrian wearing casual lower-body clothes",
    "lowerBodyFormal": "A pedestrian wearing formal lower-body clothes",
    "lowerBodyJeans": "A pedestrian wearing jeans",
    "lowerBodyShorts": "A pedestrian wearing shorts",
    "lowerBodyShortSkirt": "A pedestrian wearing a short skirt",
    "lowerBodyTrousers": "A pedestrian wearing trousers",
    "footwearLeatherShoes": "A pedestrian wearing leather shoes",
    "footwearSandals": "A pedestrian wearing sandals",
    "footwearShoes": "A pedestrian wearing shoes",
    "footwearSneaker": "A pedestrian wearing sneakers",
    "carryingBackpack": "A pedestrian carrying a backpack",
    "carryingOther": "A pedestrian carrying something",
    "carryingMessengerBag": "A pedestrian carrying a messenger bag",
    "carryingNothing": "A pedestrian carrying nothing",
    "carryingPlasticBags": "A pedestrian carrying plastic bags",
    "personalLess30": "A pedestrian under thirty years old",
    "personalLess45": "A pedestrian between thirty and forty-five",
    "personalLess60": "A pedestrian between forty-five and sixty",
    "personalLarger60": "A pedestrian over sixty years old",
    "personalMale": "A male pedestrian",
    # WIDER
    "Male": "A male pedestrian",
    "longHair": "A pedestrian with long hair",
    "sunglass": "A pedestrian wearing sunglasses",
    "Tshirt": "A pedestrian wearing a T-shirt",
    "longSleeve": "A pedestrian wearing a long-sleeved top",
    "formal": "A pedestrian wearing formal clothes",
    "shorts": "A pedestrian wearing shorts",
    "jeans": "A pedestrian wearing jeans",
    "longPants": "A pedestrian wearing long trousers",
    "skirt": "A pedestrian wearing a skirt",
    "faceMask": "A pedestrian wearing a face mask",
    "logo": "A pedestrian wearing clothes with a logo",
    "stripe": "A pedestrian wearing clothes with stripes",
}

# Dataset prefixes (RAP's hs-/ub-/lb-, PETA's camel-case groups, UPAR's
# Category-Value names) and the sentence frame each one takes.
_FRAMES = (
    (r"^(hs-|accessory|Accessory-)", "A pedestrian with {}"),
    (r"^(hair|Hair-)", "A pedestrian with {} hair"),
    (r"^(ub-|upperBody|UpperBody-)", "A pedestrian wearing {} on the upper body"),
    (r"^(lb-|lowerBody|LowerBody-)", "A pedestrian wearing {} on the lower body"),
    (r"^(shoes-|footwear)", "A pedestrian wearing {} shoes"),
    (r"^(attach-|carrying|Carrying-)", "A pedestrian carrying {}"),
    (r"^(action-)", "A pedestrian {}"),
    (r"^(Age-|personal|Age)", "A pedestrian of age {}"),
    (r"^(Gender-)", "A {} pedestrian"),
)


def _words(name: str) -> str:
    text = re.sub(r"[-_&]", " ", name)
    text = re.sub(r"(?<=[a-z0-9])(?=[A-Z])", " ", text)
    return " ".join(text.split()).lower()


def sentence_for(name: str) -> str:
    """The sentence for attribute ``name`` (hand-written or built from the name)."""
    if name in SENTENCES:
        return SENTENCES[name]
    for pattern, frame in _FRAMES:
        match = re.match(pattern, name)
        if match:
            rest = name[match.end():] or name
            return frame.format(_words(rest))
    return f"A pedestrian with attribute {_words(name)}"


def sentences_for(names: list[str] | tuple[str, ...]) -> tuple[str, ...]:
    return tuple(sentence_for(n) for n in names)
