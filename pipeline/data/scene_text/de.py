"""German captions. Adjectives are declined by article, case and gender ("ein kleiner roter
Kreis links von einem blauen Quadrat", "eine gelbe Raute", "ein grünes Dreieck", "zwei rote
Kreise"); prepositions take their case (links von / über / zwischen / mit + dative) and
contract with the definite article where German does ("links vom blauen Quadrat")."""
from __future__ import annotations

from .common import Template, View

# singular, gender (m, f, n), plural
NOUNS = {
    "circle": ("Kreis", "m", "Kreise"), "square": ("Quadrat", "n", "Quadrate"),
    "triangle": ("Dreieck", "n", "Dreiecke"), "star": ("Stern", "m", "Sterne"),
    "diamond": ("Raute", "f", "Rauten"), "cross": ("Kreuz", "n", "Kreuze"),
}
# Adjective stems; "orangefarben" rather than the colloquial, undeclinable "orange".
COLOURS = {
    "red": "rot", "green": "grün", "blue": "blau", "yellow": "gelb", "purple": "violett",
    "orange": "orangefarben", "white": "weiß", "black": "schwarz",
}
COLOUR_NOUNS = {"orange": "Orange"}  # "in Orange"; the others are the capitalised stem ("in Rot")
SIZES = {"small": "klein", "large": "groß"}
BACKGROUNDS = {"grey": "grau", "beige": "beigefarben", "pink": "rosafarben", "brown": "braun", "teal": "blaugrün"}
BACKGROUND = ("Hintergrund", "m")

ARTICLES = {  # (determiner, case) -> m, f, n
    ("indef", "nom"): ("ein", "eine", "ein"), ("indef", "acc"): ("einen", "eine", "ein"),
    ("indef", "dat"): ("einem", "einer", "einem"),
    ("def", "nom"): ("der", "die", "das"), ("def", "acc"): ("den", "die", "das"), ("def", "dat"): ("dem", "der", "dem"),
}
# Mixed declension after "ein", weak after "der", strong without an article.
ENDINGS = {
    ("indef", "nom"): ("er", "e", "es"), ("indef", "acc"): ("en", "e", "es"), ("indef", "dat"): ("en", "en", "en"),
    ("def", "nom"): ("e", "e", "e"), ("def", "acc"): ("en", "e", "e"), ("def", "dat"): ("en", "en", "en"),
    ("none", "nom"): ("er", "e", "es"), ("none", "acc"): ("en", "e", "es"), ("none", "dat"): ("em", "er", "em"),
}
PLURAL_ENDINGS = {"nom": "e", "acc": "e", "dat": "en"}  # strong, after a number word
NUMBERS = {2: "zwei", 3: "drei"}
RELATIVE = ("der", "die", "das")  # relative pronoun, nominative

REL = {"left": "links von", "right": "rechts von", "above": "über", "below": "unter"}  # + dative
SIDE = {"left": "links", "right": "rechts", "above": "oben", "below": "unten"}
BESIDE = {"left": "links daneben", "right": "rechts daneben", "above": "darüber", "below": "darunter"}
ORDER = {"left": "von links nach rechts", "above": "von oben nach unten"}
LINE = {"left": "nebeneinander", "above": "untereinander"}
AGAIN = {"left": "von", "right": "von", "above": "", "below": ""}  # repeated before a second object
MIDDLE = "in der Mitte"


def _np(det: str, case: str, gender: str, stems: list[str], noun: str) -> str:
    g = "mfn".index(gender)
    article = ARTICLES[det, case][g] if det != "none" else ""
    adjectives = [stem + ENDINGS[det, case][g] for stem in stems]
    return " ".join(filter(None, [article, *adjectives, noun]))


def phrase(o: dict, case: str = "nom", det: str = "indef", sized: bool = False,
           colour: bool = True, extra: tuple[str, ...] = ()) -> str:
    """The noun phrase of one object: phrase(o, "dat") == "einem kleinen roten Kreis"."""
    noun, gender, _ = NOUNS[o["shape"]]
    stems = [*extra, *([SIZES[o["size"]]] if sized else []), *([COLOURS[o["colour"]]] if colour else [])]
    return _np(det, case, gender, stems, noun)


def plural(o: dict, count: int, case: str = "nom") -> str:
    """count objects like o: plural(o, 2) == "zwei rote Kreise", dative "zwei roten Kreisen"."""
    noun = NOUNS[o["shape"]][2]
    if case == "dat" and not noun.endswith(("n", "s")):
        noun += "n"
    return f"{NUMBERS[count]} {COLOURS[o['colour']]}{PLURAL_ENDINGS[case]} {noun}"


def background(name: str, case: str = "dat", det: str = "none") -> str:
    """"grauem Hintergrund" (auf ...), "ein grauer Hintergrund"."""
    return _np(det, case, BACKGROUND[1], [BACKGROUNDS[name]], BACKGROUND[0])


def after(preposition: str, definite_dative: str) -> str:
    """A preposition before a definite dative phrase: "von" + "dem" contracts to "vom"."""
    if preposition.endswith("von") and definite_dative.startswith("dem "):
        return f"{preposition[:-3]}vom {definite_dative[4:]}".lstrip()
    return f"{preposition} {definite_dative}".lstrip()


def colour_noun(colour: str) -> str:
    """"Rot" in "ein kleines Dreieck in Rot"."""
    return COLOUR_NOUNS.get(colour, COLOURS[colour].capitalize())


def templates(v: View) -> list[Template]:
    objs, on_bg = v.objects, f"auf {background(v.background)}"

    def nom(o: dict) -> str:
        return phrase(o, "nom", sized=v.sized())

    def dat(o: dict) -> str:
        return phrase(o, "dat", sized=v.sized())

    if len(objs) == 1:
        o = objs[0]
        return [
            lambda: nom(o), lambda: f"{nom(o)} {on_bg}", lambda: f"ein Bild von {dat(o)}",
            lambda: f"auf dem Bild ist {nom(o)}",
            lambda: f"{phrase(o, sized=v.sized(), extra=('einzeln',))} {on_bg}",
            lambda: f"ein Bild, das {phrase(o, 'acc', sized=v.sized())} zeigt",
            lambda: f"{phrase(o, sized=True, colour=False)} in {colour_noun(o['colour'])}",
            lambda: f"{nom(o)} vor {background(v.background)}",
            lambda: f"{background(v.background, 'nom', 'indef')} mit {dat(o)}",
            lambda: f"das Bild enthält {phrase(o, 'acc', sized=v.sized())}",
        ]
    fw, bw = v.forward, v.backward
    A, B = objs[0], objs[1]
    if len(objs) == 2:
        return [
            lambda: f"{nom(A)} {REL[fw]} {dat(B)}", lambda: f"auf dem Bild ist {nom(B)} {REL[bw]} {dat(A)}",
            lambda: f"zwei Formen: {nom(A)} und {nom(B)}", lambda: f"{nom(A)} und {nom(B)} {on_bg}",
            lambda: f"{nom(A)} {SIDE[fw]} und {nom(B)} {SIDE[bw]}",
            lambda: f"ein Bild von {dat(B)} {REL[bw]} {dat(A)}",
            lambda: f"{phrase(A, det='def', sized=v.sized())} ist "
                    f"{after(REL[fw], phrase(B, 'dat', 'def', v.sized()))}",
            lambda: f"{nom(A)} {REL[fw]} {dat(B)} {on_bg}",
            lambda: f"zwei Objekte {on_bg}: {nom(B)} und {nom(A)}", lambda: f"{nom(B)} mit {dat(A)} {BESIDE[fw]}",
        ]
    C = objs[2]
    relative = RELATIVE["mfn".index(NOUNS[B["shape"]][1])]
    return [
        lambda: f"drei Formen: {nom(A)}, {nom(B)} und {nom(C)}",
        lambda: f"{ORDER[fw]}: {nom(A)}, {nom(B)} und {nom(C)}",
        lambda: f"{nom(A)}, {nom(B)} und {nom(C)} {LINE[fw]}", lambda: f"{nom(B)} zwischen {dat(A)} und {dat(C)}",
        lambda: f"{phrase(A)} {REL[fw]} {phrase(B, 'dat')}, {relative} {REL[fw]} {phrase(C, 'dat')} liegt",
        lambda: f"drei Formen {on_bg} mit {dat(B)} {MIDDLE}", lambda: f"auf dem Bild ist {nom(C)} {REL[bw]} {dat(B)}",
        lambda: f"{phrase(A)} {SIDE[fw]}, {phrase(B)} {MIDDLE} und {phrase(C)} {SIDE[bw]}",
        lambda: f"{phrase(A, det='def', sized=v.sized())} ist {after(REL[fw], phrase(B, 'dat', 'def', v.sized()))} "
                f"und {after(AGAIN[fw], phrase(C, 'dat', 'def', v.sized()))}",
        lambda: f"ein Bild von drei Formen, {SIDE[bw]} {nom(C)}",
    ]
