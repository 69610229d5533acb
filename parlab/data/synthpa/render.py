"""Procedural pedestrian renderer for SynthPA.

Every attribute is drawn where it lives on the body and only where the view
lets it be seen: a hat on the head, glasses on the face (not from the back),
stripes, plaid, a logo or colour splicing on the upper body, the shape of the
lower garment, boots at the feet, a backpack on the back (only its straps from
the front), bags at the hip. Colours, body proportions, pose, background
clutter, scale, position, occlusion, blur, noise and JPEG artefacts vary per
image, so no attribute can be read from one pixel or one colour; rare
attributes are small details, as in real surveillance crops.

The drawing happens on a canvas twice the output size and is downsampled, so
thin details (glasses, stripes) are anti-aliased rather than aliased.
"""

from __future__ import annotations

import colorsys
import io
from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageDraw, ImageFilter

from parlab.data.synthpa.network import ATTRIBUTES

SUPERSAMPLE = 2
_COL = {a: j for j, a in enumerate(ATTRIBUTES)}

Colour = tuple[int, int, int]


def _hsv(rng: np.random.Generator, s: tuple[float, float], v: tuple[float, float], h: float | None = None) -> Colour:
    hue = rng.random() if h is None else h
    r, g, b = colorsys.hsv_to_rgb(hue, rng.uniform(*s), rng.uniform(*v))
    return int(r * 255), int(g * 255), int(b * 255)


def _garment_colour(rng: np.random.Generator) -> Colour:
    """Clothing: mostly muted, sometimes dark, sometimes saturated."""
    kind = rng.random()
    if kind < 0.35:
        return _hsv(rng, (0.0, 0.15), (0.08, 0.35))  # black / dark grey
    if kind < 0.5:
        return _hsv(rng, (0.0, 0.12), (0.55, 0.95))  # white / light grey
    return _hsv(rng, (0.25, 0.9), (0.25, 0.9))


def _contrast(rng: np.random.Generator, base: Colour) -> Colour:
    """A colour clearly different from ``base`` (for patterns)."""
    for _ in range(8):
        c = _garment_colour(rng)
        if sum(abs(a - b) for a, b in zip(c, base)) > 150:
            return c
    return tuple(255 - x for x in base)  # type: ignore[return-value]


def _skin(rng: np.random.Generator) -> Colour:
    return _hsv(rng, (0.2, 0.6), (0.35, 0.95), h=rng.uniform(0.03, 0.09))


def _hair(rng: np.random.Generator, old: bool) -> Colour:
    if rng.random() < (0.75 if old else 0.05):
        return _hsv(rng, (0.0, 0.08), (0.55, 0.92))  # grey / white
    kind = rng.random()
    if kind < 0.6:
        return _hsv(rng, (0.0, 0.3), (0.05, 0.2))
    if kind < 0.9:
        return _hsv(rng, (0.4, 0.8), (0.2, 0.45), h=rng.uniform(0.04, 0.1))
    return _hsv(rng, (0.4, 0.7), (0.6, 0.85), h=rng.uniform(0.1, 0.14))


@dataclass
class Body:
    """Geometry of one pedestrian on the canvas (pixels)."""

    cx: float
    top: float
    height: float
    head_r: float
    shoulder: float  # half width
    hip: float  # half width
    neck_y: float
    waist_y: float
    crotch_y: float
    ankle_y: float
    feet_y: float
    depth: float  # 1 front/back, ~0.55 side: horizontal squash of the torso
    facing: int  # side view: +1 facing right, -1 facing left


def _body(rng: np.random.Generator, y: np.ndarray, w: int, h: int) -> Body:
    child, old, female = y[_COL["AgeLess18"]], y[_COL["AgeOver60"]], y[_COL["Female"]]
    height = h * rng.uniform(0.8, 0.96)
    top = (h - height) * rng.uniform(0.15, 0.85)
    cx = w / 2 + w * rng.uniform(-0.08, 0.08)
    head_frac = rng.uniform(0.145, 0.17) if child else rng.uniform(0.115, 0.135)
    head_r = height * head_frac / 2
    shoulder = height * rng.uniform(0.105, 0.135) * (0.88 if female else 1.0) * (0.92 if child else 1.0)
    hip = shoulder * (rng.uniform(0.92, 1.08) if female else rng.uniform(0.75, 0.9))
    neck_y = top + 2 * head_r + height * 0.015
    waist_y = neck_y + height * rng.uniform(0.29, 0.33) * (0.95 if child else 1.0)
    crotch_y = waist_y + height * 0.05
    feet_y = top + height
    ankle_y = feet_y - height * 0.035
    if old:  # a slightly stooped, shorter posture
        neck_y += height * 0.01
    side = y[_COL["Side"]] == 1
    depth = rng.uniform(0.5, 0.62) if side else 1.0
    return Body(cx, top, height, head_r, shoulder * depth, hip * depth, neck_y, waist_y, crotch_y,
                ankle_y, feet_y, depth, int(rng.choice((-1, 1))))


def _background(rng: np.random.Generator, w: int, h: int) -> Image.Image:
    top, bottom = _hsv(rng, (0.0, 0.4), (0.25, 0.85)), _hsv(rng, (0.0, 0.35), (0.2, 0.75))
    t = np.linspace(0, 1, h)[:, None, None]
    grad = (1 - t) * np.array(top) + t * np.array(bottom)
    img = Image.fromarray(np.broadcast_to(grad, (h, w, 3)).astype(np.uint8))
    d = ImageDraw.Draw(img)
    horizon = h * rng.uniform(0.45, 0.75)
    d.rectangle((0, horizon, w, h), fill=_hsv(rng, (0.0, 0.3), (0.2, 0.7)))
    for _ in range(int(rng.integers(3, 10))):  # walls, windows, poles, cars, shrubs
        kind = rng.random()
        x0, y0 = rng.uniform(-0.2, 1.0) * w, rng.uniform(-0.1, 0.9) * h
        c = _hsv(rng, (0.0, 0.7), (0.1, 0.95))
        if kind < 0.45:
            d.rectangle((x0, y0, x0 + rng.uniform(0.1, 0.6) * w, y0 + rng.uniform(0.05, 0.4) * h), fill=c)
        elif kind < 0.7:
            d.line((x0, 0, x0 + rng.uniform(-4, 4), h), fill=c, width=int(rng.integers(2, 7)))
        elif kind < 0.9:
            d.ellipse((x0, y0, x0 + rng.uniform(0.1, 0.5) * w, y0 + rng.uniform(0.05, 0.2) * h), fill=c)
        else:  # a partial passer-by at the edge
            px = -0.15 * w if rng.random() < 0.5 else 0.85 * w
            d.rounded_rectangle((px, y0, px + 0.3 * w, y0 + 0.6 * h), radius=int(0.08 * w), fill=c)
    return img


def _torso_polygon(b: Body, bottom_y: float, flare: float = 0.0) -> list[tuple[float, float]]:
    return [
        (b.cx - b.shoulder, b.neck_y + b.height * 0.01),
        (b.cx + b.shoulder, b.neck_y + b.height * 0.01),
        (b.cx + b.hip * 0.95 + flare, bottom_y),
        (b.cx - b.hip * 0.95 - flare, bottom_y),
    ]


def _patterned(base: Image.Image, mask_poly: list[tuple[float, float]], draw_pattern) -> None:
    """Draw a pattern clipped to a polygon (the garment it belongs to)."""
    layer = base.copy()
    draw_pattern(ImageDraw.Draw(layer))
    mask = Image.new("L", base.size, 0)
    ImageDraw.Draw(mask).polygon(mask_poly, fill=255)
    base.paste(layer, (0, 0), mask)


def _on(y: np.ndarray, name: str) -> bool:
    return bool(y[_COL[name]])


@dataclass
class _Scene:
    """Drawing state shared by the steps of :func:`render_person`."""

    img: Image.Image
    d: ImageDraw.ImageDraw
    rng: np.random.Generator
    y: np.ndarray
    w: int
    h: int
    view: str
    b: Body
    skin: Colour
    hair: Colour
    upper: Colour
    lower: Colour
    long_hair: bool
    leg_len: float
    lw: float  # leg half-width
    legs_x: tuple[float, float]
    stride: float
    head_cy: float

    def on(self, name: str) -> bool:
        """Whether attribute ``name`` is positive."""
        return _on(self.y, name)

    def redraw(self) -> None:
        """Renew ``d``: a paste may replace the image's pixel store under the old one."""
        self.d = ImageDraw.Draw(self.img)


def _scene(y: np.ndarray, rng: np.random.Generator, w: int, h: int) -> _Scene:
    """Background, body geometry and the colours every later step shares."""
    img = _background(rng, w, h)
    view = "front" if _on(y, "Front") else "back" if _on(y, "Back") else "side"
    b = _body(rng, y, w, h)
    skin, hair = _skin(rng), _hair(rng, _on(y, "AgeOver60"))
    upper, lower = _garment_colour(rng), _garment_colour(rng)
    long_hair = rng.random() < (0.7 if _on(y, "Female") else 0.08)
    lw = max(b.hip * 0.42, 2.0)
    legs_x = (b.cx - b.hip * 0.5, b.cx + b.hip * 0.5) if view != "side" else (b.cx - lw * 0.3, b.cx + lw * 0.4)
    stride = rng.uniform(0, 0.12) * b.height if view == "side" else 0.0
    return _Scene(img, ImageDraw.Draw(img), rng, y, w, h, view, b, skin, hair, upper, lower, long_hair,
                  b.ankle_y - b.crotch_y, lw, legs_x, stride, b.top + b.head_r)


def _draw_back_hair(s: _Scene) -> None:
    """Long hair behind the shoulders is seen from the back (and a little from the sides)."""
    b = s.b
    if s.long_hair and s.view != "front":
        s.d.rectangle((b.cx - b.head_r * 0.95, s.head_cy, b.cx + b.head_r * 0.95, b.neck_y + b.height * 0.08),
                      fill=s.hair)


def _draw_side_backpack(s: _Scene, colour: Colour) -> None:
    """Backpack body behind the torso, seen from the side (drawn before the torso hides part of it)."""
    b = s.b
    if s.on("Backpack") and s.view == "side":
        bx = b.cx - b.facing * (b.shoulder + b.height * 0.035)
        s.d.rounded_rectangle((bx - b.height * 0.045, b.neck_y + b.height * 0.03, bx + b.height * 0.045,
                               b.neck_y + b.height * 0.2), radius=3, fill=colour)


def _draw_legs_and_feet(s: _Scene) -> tuple[str, float]:
    """Legs, the leg-covering part of the lower garment and the feet.

    Returns:
        (lower garment kind, y of its hem).
    """
    b, rng = s.b, s.rng
    boots_colour = _hsv(rng, (0.2, 0.7), (0.08, 0.45), h=rng.uniform(0.02, 0.12))
    shoe_colour = _garment_colour(rng)
    lower_kind = ("trousers" if s.on("Trousers") else "shorts" if s.on("Shorts")
                  else "skirt" if s.on("Skirt&Dress") else "trousers")
    # Every entry is evaluated, so both draws happen whatever the kind (the random stream depends on it).
    garment_end = {
        "trousers": b.ankle_y,
        "shorts": b.crotch_y + s.leg_len * rng.uniform(0.25, 0.42),
        "skirt": b.crotch_y + s.leg_len * rng.uniform(0.25, 0.7),
    }[lower_kind]
    for k, lx in enumerate(s.legs_x):
        _draw_leg(s, k, lx, lower_kind, garment_end, boots_colour, shoe_colour)
    return lower_kind, garment_end


def _draw_leg(s: _Scene, k: int, lx: float, lower_kind: str, garment_end: float,
              boots_colour: Colour, shoe_colour: Colour) -> None:
    """Leg ``k`` (0 left, 1 right) at hip x ``lx``, its trouser leg and its foot."""
    b, d, rng, lw = s.b, s.d, s.rng, s.lw
    foot_x = lx + (s.stride if k else -s.stride) * 0.5
    leg = [(lx - lw, b.waist_y), (lx + lw, b.waist_y), (foot_x + lw * 0.8, b.ankle_y), (foot_x - lw * 0.8, b.ankle_y)]
    d.polygon(leg, fill=s.skin)
    if lower_kind != "skirt":
        t = (garment_end - b.waist_y) / (b.ankle_y - b.waist_y)
        gx = lx + (foot_x - lx) * t
        cover = [(lx - lw * 1.05, b.waist_y), (lx + lw * 1.05, b.waist_y),
                 (gx + lw * 0.95, garment_end), (gx - lw * 0.95, garment_end)]
        d.polygon(cover, fill=s.lower)
        if s.on("LowerStripe"):  # a side stripe down the trouser leg
            sx = lx + (lw * 0.75 if k else -lw * 0.75)
            d.line((sx, b.waist_y + 2, sx + (gx - lx), garment_end - 1), fill=_contrast(rng, s.lower),
                   width=max(2, int(lw * 0.3)))
    foot_len = b.height * 0.05
    if s.on("boots"):
        boot_top = b.ankle_y - s.leg_len * rng.uniform(0.22, 0.38)
        d.polygon([(foot_x - lw * 0.95, boot_top), (foot_x + lw * 0.95, boot_top),
                   (foot_x + lw * 0.95, b.feet_y), (foot_x - lw * 0.95, b.feet_y)], fill=boots_colour)
        d.line((foot_x - lw, boot_top, foot_x + lw, boot_top), fill=_contrast(rng, boots_colour), width=1)
    toe = foot_len * (b.facing if s.view == "side" else 0.3)
    d.ellipse((foot_x - lw - abs(toe) * (toe < 0), b.ankle_y, foot_x + lw + abs(toe) * (toe > 0), b.feet_y),
              fill=boots_colour if s.on("boots") else shoe_colour)


def _draw_lower_garment(s: _Scene, lower_kind: str, garment_end: float) -> list[tuple[float, float]]:
    """A skirt over the legs (trousers are drawn per leg); returns the garment's outline."""
    b, d, lw, legs_x = s.b, s.d, s.lw, s.legs_x
    if lower_kind != "skirt":
        return [(legs_x[0] - lw * 1.1, b.waist_y), (legs_x[1] + lw * 1.1, b.waist_y),
                (legs_x[1] + lw * 1.1 + s.stride, garment_end), (legs_x[0] - lw * 1.1 - s.stride, garment_end)]
    flare = b.hip * s.rng.uniform(0.2, 0.6)
    skirt = [(b.cx - b.hip, b.waist_y), (b.cx + b.hip, b.waist_y),
             (b.cx + b.hip + flare, garment_end), (b.cx - b.hip - flare, garment_end)]
    d.polygon(skirt, fill=s.lower)
    if s.on("LowerStripe"):
        c = _contrast(s.rng, s.lower)
        for k in range(1, 3):  # horizontal bands near the hem
            yy = garment_end - k * (garment_end - b.waist_y) * 0.15
            d.line((b.cx - b.hip - flare * 0.9, yy, b.cx + b.hip + flare * 0.9, yy), fill=c, width=2)
    return skirt


def _draw_lower_pattern(s: _Scene, lower_kind: str, garment_end: float,
                        lower_poly: list[tuple[float, float]]) -> None:
    """Dots or small checks on the lower garment."""
    b, lw, legs_x = s.b, s.lw, s.legs_x
    c, step = _contrast(s.rng, s.lower), max(3, int(b.height * s.rng.uniform(0.025, 0.04)))
    dots = s.rng.random() < 0.5

    def pattern(pd: ImageDraw.ImageDraw) -> None:
        for yy in range(int(b.waist_y), int(garment_end), step):
            for xx in range(int(b.cx - b.hip * 2), int(b.cx + b.hip * 2), step):
                if dots:
                    pd.ellipse((xx, yy, xx + step * 0.45, yy + step * 0.45), fill=c)
                elif (xx // step + yy // step) % 2:
                    pd.rectangle((xx, yy, xx + step - 1, yy + step - 1), fill=c)

    leg_mask = lower_poly if lower_kind == "skirt" else [
        (legs_x[0] - lw, b.waist_y), (legs_x[1] + lw, b.waist_y),
        (legs_x[1] + lw, garment_end), (legs_x[0] - lw, garment_end)]
    _patterned(s.img, leg_mask, pattern)
    s.redraw()


def _draw_torso(s: _Scene) -> tuple[list[tuple[float, float]], float]:
    """The upper garment (a long coat reaches down over the legs); returns (outline, bottom y)."""
    b = s.b
    coat = s.on("LongCoat")
    torso_bottom = b.crotch_y + s.leg_len * s.rng.uniform(0.45, 0.6) if coat else b.waist_y + b.height * 0.02
    torso = _torso_polygon(b, torso_bottom, flare=b.hip * 0.25 if coat else 0.0)
    s.d.polygon(torso, fill=s.upper)
    if coat:  # the coat's opening and buttons
        s.d.line((b.cx, b.neck_y + 2, b.cx, torso_bottom), fill=_contrast(s.rng, s.upper), width=1)
    return torso, torso_bottom


def _draw_upper_patterns(s: _Scene, torso: list[tuple[float, float]], torso_bottom: float) -> None:
    """Colour splicing, stripes and plaid, each clipped to the torso."""
    b, rng, w, h = s.b, s.rng, s.w, s.h
    second = _contrast(rng, s.upper)  # drawn even when unused, to keep the random stream fixed
    if s.on("UpperSplice"):  # two colour blocks, vertical, diagonal or a band
        kind = rng.integers(3)

        def splice(pd: ImageDraw.ImageDraw) -> None:
            if kind == 0:
                pd.rectangle((b.cx, 0, w, h), fill=second)
            elif kind == 1:
                pd.polygon([(b.cx - b.shoulder * 1.5, b.neck_y), (w, b.neck_y), (w, torso_bottom)], fill=second)
            else:
                pd.rectangle((0, b.neck_y, w, b.neck_y + (torso_bottom - b.neck_y) * 0.35), fill=second)

        _patterned(s.img, torso, splice)
    if s.on("UpperStride"):
        n_str, c = int(rng.integers(3, 7)), _contrast(rng, s.upper)

        def stripes(pd: ImageDraw.ImageDraw) -> None:
            gap = (b.waist_y - b.neck_y) / n_str
            for k in range(n_str):
                yy = b.neck_y + gap * (k + 0.5)
                pd.rectangle((0, yy, w, yy + max(2.0, gap * 0.4)), fill=c)

        _patterned(s.img, torso, stripes)
    if s.on("UpperPlaid"):
        c1, c2 = _contrast(rng, s.upper), _contrast(rng, s.upper)
        step = max(4, int(b.height * rng.uniform(0.035, 0.055)))

        def plaid(pd: ImageDraw.ImageDraw) -> None:
            for k, yy in enumerate(range(int(b.neck_y), int(torso_bottom), step)):
                pd.line((0, yy, w, yy), fill=c1 if k % 2 else c2, width=2)
            for k, xx in enumerate(range(int(b.cx - b.shoulder * 1.5), int(b.cx + b.shoulder * 1.5), step)):
                pd.line((xx, 0, xx, h), fill=c2 if k % 2 else c1, width=2)

        _patterned(s.img, torso, plaid)
    s.redraw()


def _draw_logo(s: _Scene) -> None:
    """A small print on the chest (or back)."""
    b, d, rng = s.b, s.d, s.rng
    lx = b.cx + (b.facing * b.shoulder * 0.2 if s.view == "side" else rng.uniform(-0.3, 0.3) * b.shoulder)
    ly = b.neck_y + (b.waist_y - b.neck_y) * rng.uniform(0.2, 0.45)
    r = b.shoulder * rng.uniform(0.22, 0.38)
    c = _contrast(rng, s.upper)
    shape = rng.integers(3)
    if shape == 0:
        d.ellipse((lx - r, ly - r, lx + r, ly + r), fill=c)
    elif shape == 1:
        d.rectangle((lx - r * 1.3, ly - r * 0.6, lx + r * 1.3, ly + r * 0.6), fill=c)
        d.line((lx - r, ly, lx + r, ly), fill=s.upper, width=1)
    else:
        d.polygon([(lx, ly - r), (lx + r, ly + r * 0.8), (lx - r, ly + r * 0.8)], fill=c)


def _draw_backpack(s: _Scene, colour: Colour) -> None:
    """From behind a backpack covers the upper back; from the front only its straps show."""
    b = s.b
    if s.on("Backpack") and s.view == "back":
        s.d.rounded_rectangle((b.cx - b.shoulder * 0.75, b.neck_y + b.height * 0.03, b.cx + b.shoulder * 0.75,
                               b.neck_y + b.height * 0.21), radius=4, fill=colour)
    elif s.on("Backpack") and s.view == "front":
        for sx in (-1, 1):
            s.d.line((b.cx + sx * b.shoulder * 0.55, b.neck_y + 1, b.cx + sx * b.shoulder * 0.6,
                      b.neck_y + b.height * 0.14), fill=colour, width=max(2, int(b.height * 0.012)))


def _draw_shoulder_bag(s: _Scene) -> None:
    """A strap across the body and a bag at the hip."""
    b, d = s.b, s.d
    bag_c, side = _garment_colour(s.rng), s.rng.choice((-1, 1))
    if s.view != "side":
        d.line((b.cx - side * b.shoulder * 0.7, b.neck_y + 1, b.cx + side * b.hip, b.waist_y),
               fill=bag_c, width=max(2, int(b.height * 0.01)))
    bx = b.cx + side * (b.hip + b.height * 0.02) if s.view != "side" else b.cx
    d.rounded_rectangle((bx - b.height * 0.04, b.waist_y - b.height * 0.03, bx + b.height * 0.04,
                         b.waist_y + b.height * 0.05), radius=2, fill=bag_c)


def _draw_arms(s: _Scene) -> list[tuple[float, float]]:
    """Arms, sleeves and hands; returns the hand positions."""
    b, d, rng, view = s.b, s.d, s.rng, s.view
    sleeve_len = rng.uniform(0.3, 0.45) if s.on("ShortSleeve") else 1.0
    hand_y = b.waist_y + b.height * rng.uniform(0.05, 0.1)
    arm_w = max(b.height * 0.026, 2.0)
    hold = s.on("HoldObjectsInFront")
    hands = []
    for side in (-1, 1) if view != "side" else (b.facing,):
        x0 = b.cx + side * (b.shoulder + arm_w * 0.4) if view != "side" else b.cx
        if hold:  # forearms bent towards the body's front
            x1 = b.cx + side * b.shoulder * 0.4 + (b.facing * b.shoulder if view == "side" else 0)
            y1 = b.waist_y - b.height * 0.02
        else:
            swing = rng.uniform(-0.05, 0.05) * b.height + (b.facing * 0.04 * b.height if view == "side" else 0)
            x1, y1 = x0 + side * b.height * 0.015 + swing, hand_y
        y0 = b.neck_y + b.height * 0.015
        xs = x0 + (x1 - x0) * sleeve_len
        ys = y0 + (y1 - y0) * sleeve_len
        d.line((x0, y0, x1, y1), fill=s.skin, width=int(arm_w * 1.7))
        d.line((x0, y0, xs, ys), fill=s.upper, width=int(arm_w * 2))
        d.ellipse((x1 - arm_w, y1 - arm_w, x1 + arm_w, y1 + arm_w), fill=s.skin)
        hands.append((x1, y1))
    return hands


def _draw_hand_bag(s: _Scene, hands: list[tuple[float, float]]) -> None:
    """A bag carried by one hand, at hip height."""
    b, rng = s.b, s.rng
    hx, hy = hands[int(rng.integers(len(hands)))]
    bag_c = _garment_colour(rng)
    bw, bh = b.height * rng.uniform(0.045, 0.07), b.height * rng.uniform(0.045, 0.065)
    s.d.arc((hx - bw * 0.5, hy - bh * 0.3, hx + bw * 0.5, hy + bh * 0.6), 180, 360, fill=bag_c, width=2)
    s.d.rectangle((hx - bw, hy + bh * 0.2, hx + bw, hy + bh * 1.4), fill=bag_c)


def _draw_held_object(s: _Scene) -> None:
    """A box, a folder or a bag held in front of the body."""
    b, rng = s.b, s.rng
    ox = b.cx + (b.facing * b.shoulder * 0.8 if s.view == "side" else 0)
    oy = b.waist_y - b.height * 0.02
    ow, oh = b.height * rng.uniform(0.05, 0.09), b.height * rng.uniform(0.04, 0.08)
    s.d.rectangle((ox - ow, oy - oh, ox + ow, oy + oh * 0.5), fill=_contrast(rng, s.upper))


def _draw_head(s: _Scene) -> tuple[float, tuple[float, float, float, float]]:
    """Neck and head (the face unless seen from the back); returns (head centre x, head box)."""
    b = s.b
    nx = b.cx + (b.facing * b.head_r * 0.15 if s.view == "side" else 0)
    s.d.rectangle((b.cx - b.head_r * 0.35, s.head_cy + b.head_r * 0.6, b.cx + b.head_r * 0.35, b.neck_y + 2),
                  fill=s.skin)
    head = (nx - b.head_r * 0.85, b.top, nx + b.head_r * 0.85, b.top + 2 * b.head_r)
    s.d.ellipse(head, fill=s.skin if s.view != "back" else s.hair)
    if s.view != "back":
        _draw_face(s, nx, head)
    return nx, head


def _draw_face(s: _Scene, nx: float, head: tuple[float, float, float, float]) -> None:
    """Hair seen from the front or side, eyes and glasses."""
    b, d, hair = s.b, s.d, s.hair
    hair_box = (head[0] - 1, head[1] - 1, head[2] + 1, head[1] + b.head_r * s.rng.uniform(0.7, 1.0))
    d.chord(hair_box, 180, 360, fill=hair)
    d.rectangle((hair_box[0], b.top + b.head_r * 0.4, hair_box[2], b.top + b.head_r * 0.55), fill=hair)
    if s.view == "side":  # hair covers the back of the head
        bx0 = nx - b.facing * b.head_r * 0.85
        d.ellipse((min(bx0, nx), b.top, max(bx0, nx), b.top + 1.6 * b.head_r), fill=hair)
    if s.long_hair:
        for side in (-1, 1):
            if s.view == "side" and side == b.facing:
                continue
            xa, xb = sorted((nx + side * (b.head_r * 0.95 + 2), nx + side * b.head_r * 0.7))
            d.rectangle((xa, s.head_cy, xb, b.neck_y + b.height * 0.05), fill=hair)
    eye_y = s.head_cy + b.head_r * 0.1
    eyes = (nx - b.head_r * 0.35, nx + b.head_r * 0.35) if s.view == "front" else (nx + b.facing * b.head_r * 0.5,)
    for ex in eyes:
        d.ellipse((ex - 1.2, eye_y - 1.2, ex + 1.2, eye_y + 1.2), fill=(30, 25, 25))
    if s.on("Glasses"):
        _draw_glasses(s, nx, eyes, eye_y)


def _draw_glasses(s: _Scene, nx: float, eyes: tuple[float, ...], eye_y: float) -> None:
    """Small lenses and a bridge: a small detail, as in real crops."""
    b, d = s.b, s.d
    frame = _hsv(s.rng, (0.0, 0.4), (0.0, 0.35))
    r = max(b.head_r * 0.2, 2.0)
    for ex in eyes:
        d.ellipse((ex - r, eye_y - r * 0.8, ex + r, eye_y + r * 0.8), outline=frame,
                  fill=frame if s.rng.random() < 0.4 else None, width=1)
    if s.view == "front":
        d.line((eyes[0] + r, eye_y, eyes[1] - r, eye_y), fill=frame, width=1)
    else:
        d.line((eyes[0] - b.facing * r, eye_y, nx - b.facing * b.head_r * 0.6, eye_y - 1), fill=frame, width=1)


def _draw_hat(s: _Scene, nx: float, head: tuple[float, float, float, float]) -> None:
    """A cap, a brimmed hat or a beanie on the head."""
    b, d, view = s.b, s.d, s.view
    hc = _garment_colour(s.rng)
    kind = s.rng.integers(3)
    crown = (head[0] - 1, head[1] - b.head_r * 0.2, head[2] + 1, head[1] + b.head_r * 1.1)
    d.chord(crown, 180, 360, fill=hc)
    if kind == 0:  # cap with a peak
        px = nx + (b.facing if view == "side" else 0) * b.head_r * 0.9
        d.rectangle((min(px, nx) - b.head_r * (0.9 if view != "side" else 0.1),
                     head[1] + b.head_r * 0.4, max(px, nx) + b.head_r * 0.9, head[1] + b.head_r * 0.58), fill=hc)
    elif kind == 1:  # brimmed hat
        d.ellipse((head[0] - b.head_r * 0.45, head[1] + b.head_r * 0.3, head[2] + b.head_r * 0.45,
                   head[1] + b.head_r * 0.62), fill=hc)
    else:  # beanie: taller crown
        d.chord((crown[0], crown[1] - b.head_r * 0.3, crown[2], crown[3]), 180, 360, fill=hc)


def _draw_occlusion(s: _Scene) -> None:
    """Sometimes a pole, a car roof or a passer-by's shoulder covers part of the body."""
    rng, w, h = s.rng, s.w, s.h
    if rng.random() < 0.15:
        c = _hsv(rng, (0.0, 0.6), (0.1, 0.9))
        if rng.random() < 0.5:
            y0 = h * rng.uniform(0.7, 0.9)
            s.d.rectangle((0, y0, w, h), fill=c)
        else:
            x0 = w * (rng.uniform(-0.2, 0.05) if rng.random() < 0.5 else rng.uniform(0.75, 0.95))
            s.d.rectangle((x0, h * rng.uniform(0, 0.4), x0 + w * 0.25, h), fill=c)


def render_person(y: np.ndarray, rng: np.random.Generator, size: tuple[int, int] = (128, 64)) -> Image.Image:
    """Render one pedestrian whose visible attributes are the positives of ``y``.

    Args:
        y: (26,) 0/1 labels in :data:`ATTRIBUTES` order.
        rng: the image's own generator (the image is a pure function of it and ``y``).
        size: output (height, width).
    Returns:
        An RGB image of the requested size (before noise and JPEG).
    """
    # The steps run in painting order (back to front) and each draws from ``rng``
    # in a fixed order: reordering them changes every image of a seed.
    out_h, out_w = size
    s = _scene(y, rng, out_w * SUPERSAMPLE, out_h * SUPERSAMPLE)
    _draw_back_hair(s)
    backpack_colour = _garment_colour(rng)
    _draw_side_backpack(s, backpack_colour)
    lower_kind, garment_end = _draw_legs_and_feet(s)
    lower_poly = _draw_lower_garment(s, lower_kind, garment_end)
    if s.on("LowerPattern"):
        _draw_lower_pattern(s, lower_kind, garment_end, lower_poly)
    torso, torso_bottom = _draw_torso(s)
    _draw_upper_patterns(s, torso, torso_bottom)
    if s.on("UpperLogo"):
        _draw_logo(s)
    _draw_backpack(s, backpack_colour)
    if s.on("ShoulderBag"):
        _draw_shoulder_bag(s)
    hands = _draw_arms(s)
    if s.on("HandBag"):
        _draw_hand_bag(s, hands)
    if s.on("HoldObjectsInFront"):
        _draw_held_object(s)
    nx, head = _draw_head(s)
    if s.on("Hat"):
        _draw_hat(s, nx, head)
    _draw_occlusion(s)
    return s.img.resize((out_w, out_h), Image.LANCZOS)


def degrade(img: Image.Image, rng: np.random.Generator) -> Image.Image:
    """Camera effects: blur, brightness/contrast, sensor noise."""
    if rng.random() < 0.5:
        img = img.filter(ImageFilter.GaussianBlur(radius=rng.uniform(0.2, 1.0)))
    arr = np.asarray(img, dtype=np.float32)
    arr = (arr - 128) * rng.uniform(0.75, 1.2) + 128 + rng.uniform(-25, 25)
    arr += rng.normal(0, rng.uniform(1, 8), arr.shape)
    return Image.fromarray(np.clip(arr, 0, 255).astype(np.uint8))


def render_jpeg(y: np.ndarray, rng: np.random.Generator, size: tuple[int, int] = (128, 64)) -> bytes:
    """The encoded JPEG of one SynthPA image (quality varies per image)."""
    img = degrade(render_person(y, rng, size), rng)
    buf = io.BytesIO()
    img.save(buf, format="JPEG", quality=int(rng.integers(40, 96)))
    return buf.getvalue()
