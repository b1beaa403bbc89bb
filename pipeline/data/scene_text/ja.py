"""Japanese captions, written without spaces. Modifiers come before the noun, size first
("小さい赤い丸"); a place is "X の左に" (to the left of X), so "赤い丸の右に青い四角があります"
puts the blue square to the right of the red circle, and "赤い丸は青い四角の左にあります"
says the same with the red circle as the topic."""
from __future__ import annotations

from .common import Template, View

NOUNS = {"circle": "丸", "square": "四角", "triangle": "三角", "star": "星", "diamond": "ひし形", "cross": "十字"}
COLOURS = {
    "red": "赤い", "green": "緑の", "blue": "青い", "yellow": "黄色い", "purple": "紫の",
    "orange": "オレンジ色の", "white": "白い", "black": "黒い",
}
SIZES = {"small": "小さい", "large": "大きい"}
BACKGROUNDS = {"grey": "灰色", "beige": "ベージュ", "pink": "ピンク", "brown": "茶色", "teal": "青緑"}
NUMBERS = {1: "一つの", 2: "二つの", 3: "三つの"}
SHAPES_WORD = "図形"

SIDE = {"left": "左", "right": "右", "above": "上", "below": "下"}  # "X の左に": to the left of X
CLOSE = {"left": "左側", "right": "右側", "above": "真上", "below": "真下"}
ORDER = {"left": "左から順に", "above": "上から順に"}
LINE = {"left": "横一列に", "above": "縦一列に"}
MIDDLE = "真ん中"
END = {"left": "一番左", "right": "一番右", "above": "一番上", "below": "一番下"}


def phrase(o: dict, sized: bool = False) -> str:
    """phrase({"shape": "circle", "colour": "red", "size": "small"}, sized=True) == "小さい赤い丸"."""
    return (SIZES[o["size"]] if sized else "") + COLOURS[o["colour"]] + NOUNS[o["shape"]]


def templates(v: View) -> list[Template]:
    objs, bg = v.objects, BACKGROUNDS[v.background]

    def n(o: dict) -> str:
        return phrase(o, v.sized())

    p = phrase  # sizeless, for the long three-object templates
    if len(objs) == 1:
        o = objs[0]
        return [
            lambda: n(o), lambda: f"{bg}の背景に{n(o)}", lambda: f"{n(o)}の画像", lambda: f"画像に{n(o)}があります",
            lambda: f"{NUMBERS[1]}{n(o)}が描かれた画像",
            lambda: f"色が{COLOURS[o['colour']]}{SIZES[o['size']]}{NOUNS[o['shape']]}",
            lambda: f"{bg}の背景にある{n(o)}", lambda: f"{n(o)}がある{bg}の背景",
            lambda: f"画像には{n(o)}が写っています",
        ]
    fw, bw = v.forward, v.backward
    A, B = objs[0], objs[1]
    if len(objs) == 2:
        return [
            lambda: f"{n(A)}は{n(B)}の{SIDE[fw]}にあります", lambda: f"{n(A)}の{SIDE[bw]}に{n(B)}があります",
            lambda: f"{NUMBERS[2]}{SHAPES_WORD}：{n(A)}と{n(B)}", lambda: f"{bg}の背景に{n(A)}と{n(B)}",
            lambda: f"{n(A)}が{SIDE[fw]}、{n(B)}が{SIDE[bw]}にあります",
            lambda: f"{n(A)}の{SIDE[bw]}に{n(B)}がある画像", lambda: f"{n(A)}は{n(B)}の{CLOSE[fw]}にあります",
            lambda: f"{bg}の背景で、{n(A)}が{n(B)}の{SIDE[fw]}にあります",
            lambda: f"{bg}の背景に{NUMBERS[2]}{SHAPES_WORD}：{n(B)}と{n(A)}",
            lambda: f"{n(B)}があり、その{SIDE[fw]}に{n(A)}があります",
        ]
    C = objs[2]
    return [
        lambda: f"{NUMBERS[3]}{SHAPES_WORD}：{n(A)}、{n(B)}、{n(C)}", lambda: f"{ORDER[fw]}、{n(A)}、{n(B)}、{n(C)}",
        lambda: f"{n(A)}、{n(B)}、{n(C)}が{LINE[fw]}並んでいます", lambda: f"{n(A)}と{n(C)}の間に{n(B)}があります",
        lambda: f"{p(A)}の{SIDE[bw]}に{p(B)}があり、{p(B)}の{SIDE[bw]}に{p(C)}があります",
        lambda: f"{bg}の背景に{NUMBERS[3]}{SHAPES_WORD}があり、{MIDDLE}に{n(B)}があります",
        lambda: f"{n(B)}の{SIDE[bw]}に{n(C)}があります",
        lambda: f"{p(A)}が{SIDE[fw]}、{p(B)}が{MIDDLE}、{p(C)}が{SIDE[bw]}にあります",
        lambda: f"{n(A)}は{n(B)}と{n(C)}の{SIDE[fw]}にあります",
        lambda: f"{NUMBERS[3]}{SHAPES_WORD}の画像で、{END[bw]}は{n(C)}です",
    ]
