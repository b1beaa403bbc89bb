"""French captions. Adjectives agree in gender and number; size comes before the noun and
colour after it ("une petite étoile rouge", "un grand carré bleu"); "de" contracts and
elides with the article that follows ("à gauche du carré", "à gauche d'un cercle",
"de l'étoile")."""
from __future__ import annotations

from .common import Template, View

NOUNS = {  # noun, gender
    "circle": ("cercle", "m"), "square": ("carré", "m"), "triangle": ("triangle", "m"),
    "star": ("étoile", "f"), "diamond": ("losange", "m"), "cross": ("croix", "f"),
}
COLOURS = {  # masculine, feminine
    "red": ("rouge", "rouge"), "green": ("vert", "verte"), "blue": ("bleu", "bleue"),
    "yellow": ("jaune", "jaune"), "purple": ("violet", "violette"), "orange": ("orange", "orange"),
    "white": ("blanc", "blanche"), "black": ("noir", "noire"),
}
INVARIABLE = {"orange"}  # colour nouns used as adjectives take no plural -s
SIZES = {"small": ("petit", "petite"), "large": ("grand", "grande")}  # before the noun
SINGLE = ("seul", "seule")
BACKGROUNDS = {"grey": "gris", "beige": "beige", "pink": "rose", "brown": "marron", "teal": "turquoise"}  # "fond", m
ARTICLES = {"indef": ("un", "une"), "def": ("le", "la")}
NUMBERS = {2: "deux", 3: "trois"}
VOWELS = tuple("aeiouéèêâîô")

REL = {"left": "à gauche", "right": "à droite", "above": "au-dessus", "below": "en dessous"}  # + de
SIDE = {"left": "à gauche", "right": "à droite", "above": "en haut", "below": "en bas"}
BESIDE = {"left": "à sa gauche", "right": "à sa droite", "above": "au-dessus", "below": "en dessous"}
ORDER = {"left": "de gauche à droite", "above": "de haut en bas"}
LINE = {"left": "en ligne", "above": "en colonne"}
MIDDLE = "au milieu"


def phrase(o: dict, det: str = "indef", sized: bool = False, colour: bool = True, single: bool = False) -> str:
    """phrase({"shape": "star", "colour": "red", "size": "small"}, sized=True) == "une petite étoile rouge"."""
    noun, gender = NOUNS[o["shape"]]
    g = "mf".index(gender)
    words = [*([SINGLE[g]] if single else []), *([SIZES[o["size"]][g]] if sized else []), noun,
             *([COLOURS[o["colour"]][g]] if colour else [])]
    if det == "def" and words[0].startswith(VOWELS):
        return "l'" + " ".join(words)  # l'étoile, but la petite étoile
    return " ".join([ARTICLES[det][g], *words])


def plural(o: dict, count: int) -> str:
    """plural(o, 2) == "deux cercles rouges" (croix and orange do not change)."""
    noun, gender = NOUNS[o["shape"]]
    colour = COLOURS[o["colour"]]["mf".index(gender)]
    return " ".join([NUMBERS[count], _s(noun), colour if o["colour"] in INVARIABLE else _s(colour)])


def _s(word: str) -> str:
    return word if word.endswith(("s", "x")) else word + "s"


def de(noun_phrase: str) -> str:
    """"de" before a noun phrase: du carré, d'un cercle, d'une étoile, de la croix, de l'étoile."""
    if noun_phrase.startswith("le "):
        return "du " + noun_phrase[3:]
    if noun_phrase.startswith(VOWELS):
        return "d'" + noun_phrase
    return "de " + noun_phrase


def templates(v: View) -> list[Template]:
    objs, bg = v.objects, BACKGROUNDS[v.background]

    def a(o: dict) -> str:
        return phrase(o, sized=v.sized())

    def the(o: dict) -> str:
        return phrase(o, "def", sized=v.sized())

    def rel(direction: str, noun_phrase: str) -> str:
        return f"{REL[direction]} {de(noun_phrase)}"

    if len(objs) == 1:
        o = objs[0]
        return [
            lambda: a(o), lambda: f"{a(o)} sur un fond {bg}", lambda: f"une image {de(a(o))}",
            lambda: f"il y a {a(o)} dans l'image", lambda: f"{phrase(o, sized=v.sized(), single=True)} sur fond {bg}",
            lambda: f"une image qui montre {a(o)}",
            lambda: f"{phrase(o, sized=True, colour=False)} de couleur {COLOURS[o['colour']][1]}",  # la couleur
            lambda: f"{a(o)} devant un fond {bg}", lambda: f"un fond {bg} avec {a(o)}",
            lambda: f"l'image contient {a(o)}",
        ]
    fw, bw = v.forward, v.backward
    A, B = objs[0], objs[1]
    if len(objs) == 2:
        return [
            lambda: f"{a(A)} {rel(fw, a(B))}", lambda: f"il y a {a(B)} {rel(bw, a(A))}",
            lambda: f"deux formes : {a(A)} et {a(B)}", lambda: f"{a(A)} et {a(B)} sur un fond {bg}",
            lambda: f"{a(A)} {SIDE[fw]} et {a(B)} {SIDE[bw]}", lambda: f"une image {de(a(B))} {rel(bw, a(A))}",
            lambda: f"{the(A)} est {rel(fw, the(B))}", lambda: f"{a(A)} {rel(fw, a(B))} sur fond {bg}",
            lambda: f"deux objets sur un fond {bg} : {a(B)} et {a(A)}", lambda: f"{a(B)} avec {a(A)} {BESIDE[fw]}",
        ]
    C = objs[2]
    return [
        lambda: f"trois formes : {a(A)}, {a(B)} et {a(C)}", lambda: f"{ORDER[fw]} : {a(A)}, {a(B)} et {a(C)}",
        lambda: f"{a(A)}, {a(B)} et {a(C)} {LINE[fw]}", lambda: f"{a(B)} entre {a(A)} et {a(C)}",
        lambda: f"{phrase(A)} {rel(fw, phrase(B))}, qui est {rel(fw, phrase(C))}",
        lambda: f"trois formes sur un fond {bg} avec {a(B)} {MIDDLE}", lambda: f"il y a {a(C)} {rel(bw, a(B))}",
        lambda: f"{phrase(A)} {SIDE[fw]}, {phrase(B)} {MIDDLE} et {phrase(C)} {SIDE[bw]}",
        lambda: f"{the(A)} est {rel(fw, the(B))} et {de(the(C))}",
        lambda: f"une image de trois formes, {a(C)} {SIDE[bw]}",
    ]
