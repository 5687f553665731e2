"""Class names and label maps: the synthetic scenes' classes and Cityscapes' labelId -> trainId map."""
from __future__ import annotations

IGNORE_LABEL = 255

# The synthetic street scenes (synthetic.py). Order follows Cityscapes' train ids where they overlap.
CLASS_NAMES = ("road", "sidewalk", "building", "pole", "vegetation", "terrain", "sky", "person", "vehicle")
ROAD, SIDEWALK, BUILDING, POLE, VEGETATION, TERRAIN, SKY, PERSON, VEHICLE = range(len(CLASS_NAMES))

# Cityscapes: the 19 evaluation classes (train ids 0..18), in train-id order.
CITYSCAPES_CLASS_NAMES = ("road", "sidewalk", "building", "wall", "fence", "pole", "traffic light", "traffic sign",
                          "vegetation", "terrain", "sky", "person", "rider", "car", "truck", "bus", "train",
                          "motorcycle", "bicycle")

# labelId (the values of *_gtFine_labelIds.png, 0..33) -> trainId; 255 = ignored in evaluation.
# From cityscapesscripts/helpers/labels.py. Every labelId is listed, so a value outside this table
# in a labelIds file means a wrong or corrupt file and is reported as an unknown class.
CITYSCAPES_CLASS_MAP = {
    0: 255, 1: 255, 2: 255, 3: 255, 4: 255, 5: 255, 6: 255,  # unlabeled, ego vehicle, borders, oob, static, dynamic
    7: 0, 8: 1,  # road, sidewalk
    9: 255, 10: 255,  # parking, rail track
    11: 2, 12: 3, 13: 4,  # building, wall, fence
    14: 255, 15: 255, 16: 255,  # guard rail, bridge, tunnel
    17: 5, 18: 255, 19: 6, 20: 7,  # pole, polegroup, traffic light, traffic sign
    21: 8, 22: 9, 23: 10,  # vegetation, terrain, sky
    24: 11, 25: 12,  # person, rider
    26: 13, 27: 14, 28: 15, 29: 255, 30: 255, 31: 16, 32: 17, 33: 18,  # car truck bus caravan trailer train moto bike
}

# Class maps known by name (DataConfig.class_map): name -> (map, class names, strict).
# strict: raw ids missing from the map are errors (the map is complete); otherwise they map to 255.
CLASS_MAPS = {
    "cityscapes": (CITYSCAPES_CLASS_MAP, CITYSCAPES_CLASS_NAMES, True),
}
