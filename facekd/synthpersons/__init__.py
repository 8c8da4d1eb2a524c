"""SynthPersons: procedurally rendered person crops for re-ID, laid out as Market-1501.

Identities are what a person wears and how they are built: body shape (height, shoulders, hips,
legs, head), skin and hair, an upper garment (colour from a shared palette, pattern, sleeves), a
lower garment (trousers, shorts, skirt), shoes and a bag. Cameras are what changes between views:
the heading of the camera's path (front, back or side views), its illumination (colour cast,
brightness, gradient), the scene behind people, distance, blur and noise. Colours come from small
palettes shared by everyone, and every camera tints its whole crop and fills half of it with its
own scene, so colour statistics of the whole image match people poorly across cameras: a network
must learn which parts of the crop are the person.

Modules: `config` (SynthPersonsConfig), `render` (people, cameras, the renderer), `dataset`
(splits, Market-1501 names, `make_synthpersons`), `export` (the Market-1501 release), `probe`
(a trained network against a random one), `commands` (`facekd export-synth-persons`).
"""

from facekd.synthpersons.config import SynthPersonsConfig
from facekd.synthpersons.dataset import SynthPersonsData, SynthPersonsDataset, make_synthpersons

__all__ = ["SynthPersonsConfig", "SynthPersonsData", "SynthPersonsDataset", "make_synthpersons"]
