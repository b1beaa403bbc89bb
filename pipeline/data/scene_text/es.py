"""Spanish captions. Adjectives follow the noun, colour before size, and agree in gender
and number ("una estrella roja pequeña", "un cuadrado azul"); "de" + "el" contracts to
"del" ("a la izquierda del cuadrado azul")."""
from __future__ import annotations

from .common import Template, View

NOUNS = {  # noun, gender, plural
    "circle": ("círculo", "m", "círculos"), "square": ("cuadrado", "m", "cuadrados"),
    "triangle": ("triángulo", "m", "triángulos"), "star": ("estrella", "f", "estrellas"),
    "diamond": ("rombo", "m", "rombos"), "cross": ("cruz", "f", "cruces"),
}
COLOURS = {  # masculine, feminine
    "red": ("rojo", "roja"), "green": ("verde", "verde"), "blue": ("azul", "azul"),
    "yellow": ("amarillo", "amarilla"), "purple": ("morado", "morada"), "orange": ("naranja", "naranja"),
    "white": ("blanco", "blanca"), "black": ("negro", "negra"),
}
INVARIABLE = {"orange"}  # "dos círculos naranja": a colour noun used as an adjective
SIZES = {"small": ("pequeño", "pequeña"), "large": ("grande", "grande")}  # after the colour
SINGLE = ("solo", "sola")  # before the noun: "un solo círculo"
BACKGROUNDS = {"grey": "gris", "beige": "beige", "pink": "rosa", "brown": "marrón", "teal": "turquesa"}  # "fondo", m
ARTICLES = {"indef": ("un", "una"), "def": ("el", "la")}
NUMBERS = {2: "dos", 3: "tres"}

REL = {"left": "a la izquierda de", "right": "a la derecha de", "above": "encima de", "below": "debajo de"}
SIDE = {"left": "a la izquierda", "right": "a la derecha", "above": "arriba", "below": "abajo"}
BESIDE = {"left": "a su izquierda", "right": "a su derecha", "above": "encima", "below": "debajo"}
ORDER = {"left": "de izquierda a derecha", "above": "de arriba abajo"}
LINE = {"left": "en fila", "above": "en columna"}
MIDDLE = "en el centro"


def phrase(o: dict, det: str = "indef", sized: bool = False, colour: bool = True, single: bool = False) -> str:
    """phrase({"shape": "star", "colour": "red", "size": "small"}, sized=True) == "una estrella roja pequeña"."""
    noun, gender, _ = NOUNS[o["shape"]]
    g = "mf".index(gender)
    return " ".join([ARTICLES[det][g], *([SINGLE[g]] if single else []), noun,
                     *([COLOURS[o["colour"]][g]] if colour else []), *([SIZES[o["size"]][g]] if sized else [])])


def plural(o: dict, count: int) -> str:
    """plural(o, 2) == "dos círculos rojos", "dos cruces azules"."""
    _, gender, noun = NOUNS[o["shape"]]
    colour = COLOURS[o["colour"]]["mf".index(gender)]
    if o["colour"] not in INVARIABLE:
        colour += "s" if colour.endswith(("a", "e", "o")) else "es"
    return f"{NUMBERS[count]} {noun} {colour}"


def de(noun_phrase: str) -> str:
    """"de" before a noun phrase: del cuadrado, de la estrella, de un círculo."""
    return "del " + noun_phrase[3:] if noun_phrase.startswith("el ") else "de " + noun_phrase


def templates(v: View) -> list[Template]:
    objs, bg = v.objects, BACKGROUNDS[v.background]

    def a(o: dict) -> str:
        return phrase(o, sized=v.sized())

    def the(o: dict) -> str:
        return phrase(o, "def", sized=v.sized())

    def rel(direction: str, noun_phrase: str) -> str:  # "a la izquierda" + de(...)
        return f"{REL[direction].removesuffix(' de')} {de(noun_phrase)}"

    if len(objs) == 1:
        o = objs[0]
        return [
            lambda: a(o), lambda: f"{a(o)} sobre un fondo {bg}", lambda: f"una imagen de {a(o)}",
            lambda: f"hay {a(o)} en la imagen", lambda: f"{phrase(o, sized=v.sized(), single=True)} sobre fondo {bg}",
            lambda: f"una imagen que muestra {a(o)}",
            lambda: f"{phrase(o, sized=True, colour=False)} de color {COLOURS[o['colour']][0]}",  # el color
            lambda: f"{a(o)} frente a un fondo {bg}", lambda: f"un fondo {bg} con {a(o)}",
            lambda: f"la imagen contiene {a(o)}",
        ]
    fw, bw = v.forward, v.backward
    A, B = objs[0], objs[1]
    if len(objs) == 2:
        return [
            lambda: f"{a(A)} {rel(fw, a(B))}", lambda: f"hay {a(B)} {rel(bw, a(A))}",
            lambda: f"dos formas: {a(A)} y {a(B)}", lambda: f"{a(A)} y {a(B)} sobre un fondo {bg}",
            lambda: f"{a(A)} {SIDE[fw]} y {a(B)} {SIDE[bw]}", lambda: f"una imagen de {a(B)} {rel(bw, a(A))}",
            lambda: f"{the(A)} está {rel(fw, the(B))}", lambda: f"{a(A)} {rel(fw, a(B))} sobre fondo {bg}",
            lambda: f"dos objetos sobre un fondo {bg}: {a(B)} y {a(A)}", lambda: f"{a(B)} con {a(A)} {BESIDE[fw]}",
        ]
    C = objs[2]
    return [
        lambda: f"tres formas: {a(A)}, {a(B)} y {a(C)}", lambda: f"{ORDER[fw]}: {a(A)}, {a(B)} y {a(C)}",
        lambda: f"{a(A)}, {a(B)} y {a(C)} {LINE[fw]}", lambda: f"{a(B)} entre {a(A)} y {a(C)}",
        lambda: f"{phrase(A)} {rel(fw, phrase(B))}, que está {rel(fw, phrase(C))}",
        lambda: f"tres formas sobre un fondo {bg} con {a(B)} {MIDDLE}", lambda: f"hay {a(C)} {rel(bw, a(B))}",
        lambda: f"{phrase(A)} {SIDE[fw]}, {phrase(B)} {MIDDLE} y {phrase(C)} {SIDE[bw]}",
        lambda: f"{the(A)} está {rel(fw, the(B))} y {de(the(C))}",
        lambda: f"una imagen de tres formas, {a(C)} {SIDE[bw]}",
    ]
