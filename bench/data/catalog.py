"""The built-in datasets of the UNIP benchmark and the disk layouts their releases use.

Layouts were read off the public releases and the UNIP release's mmseg configs
(``UNIP_segmentation/configs/_base_/datasets/*.py``); where a release was not checked
first-hand the layout's description says so.
"""

from __future__ import annotations

from bench.backbones.backbone import IMAGENET_MEAN, IMAGENET_STD
from bench.data.spec import DatasetInfo, Layout

# The released segmentation configs of SODA, MFNet and SCUT-Seg normalise with
# mean 96.9255, std 47.8976 in 0-255 units (std 0.18783). UNIP's *pre-training* uses std
# 0.1871 (bench.backbones.backbone.INFRARED_STD), which distillation keeps; segmentation does not.
INFRARED_SEG_MEAN = (96.9255 / 255,) * 3
INFRARED_SEG_STD = (47.8976 / 255,) * 3

# Depth maps follow the UNIP release, whose NYUv2 / SUN RGB-D configs normalise the
# (replicated) depth image with the ImageNet statistics; a depth-specific statistic would
# change what the layer-wise probing figures compare against.
DEPTH_MEAN = IMAGENET_MEAN
DEPTH_STD = IMAGENET_STD

# Protocol defaults per dataset (the paper's total batch of 8): warm-up and total
# iterations (about 100 epochs) and the released configs' evaluation intervals
# (`evaluation = dict(interval=...)`); a dataset without them needs `iters` and
# `warmup_iters` given. The depth sets of layer-wise probing train on 480 crops, and
# their test resize and sliding window follow the crop, with the released stride of 341.
DEPTH_CROP = 480
DEPTH_SCALE = (2048, DEPTH_CROP)
_DEPTH_CROPS = {"crop_size": DEPTH_CROP, "scale": DEPTH_SCALE, "slide_crop": DEPTH_CROP,
                "slide_stride": 341}


def _schedule(warmup: int, iters: int, eval_interval: int, **more: object) -> dict:
    """Defaults for every protocol ("*"): schedule, evaluation interval, anything else."""
    return {"*": {"warmup_iters": warmup, "iters": iters, "eval_interval": eval_interval,
                  **more}}


SODA_CLASSES = (
    "background", "person", "building", "tree", "road", "pole", "grass", "door", "table",
    "chair", "car", "bicycle", "lamp", "monitor", "traffic_cone", "trash_can", "animal",
    "fence", "sky", "river", "sidewalk",
)  # fmt: skip

MFNET_CLASSES = (
    "unlabelled", "car", "person", "bike", "curve", "car_stop", "guardrail", "color_cone",
    "bump",
)  # fmt: skip

SCUT_SEG_CLASSES = (
    "background", "road", "person", "rider", "car", "truck", "fence", "tree", "bus", "pole",
)  # fmt: skip

SUNRGBD_CLASSES = (
    "wall", "floor", "cabinet", "bed", "chair", "sofa", "table", "door", "window",
    "bookshelf", "picture", "counter", "blinds", "desk", "shelves", "curtain", "dresser",
    "pillow", "mirror", "floor_mat", "clothes", "ceiling", "books", "fridge", "tv", "paper",
    "towel", "shower_curtain", "box", "whiteboard", "person", "night_stand", "toilet",
    "sink", "lamp", "bathtub", "bag",
)  # fmt: skip

# NYUv2's 40-class set: the 37 SUN RGB-D classes (same order) plus three "other" groups.
NYUV2_CLASSES = SUNRGBD_CLASSES + ("otherstructure", "otherfurniture", "otherprop")

ADE20K_CLASSES = (
    "wall", "building", "sky", "floor", "tree", "ceiling", "road", "bed", "windowpane",
    "grass", "cabinet", "sidewalk", "person", "earth", "door", "table", "mountain", "plant",
    "curtain", "chair", "car", "water", "painting", "sofa", "shelf", "house", "sea",
    "mirror", "rug", "field", "armchair", "seat", "fence", "desk", "rock", "wardrobe",
    "lamp", "bathtub", "railing", "cushion", "base", "box", "column", "signboard",
    "chest_of_drawers", "counter", "sand", "sink", "skyscraper", "fireplace",
    "refrigerator", "grandstand", "path", "stairs", "runway", "case", "pool_table",
    "pillow", "screen_door", "stairway", "river", "bridge", "bookcase", "blind",
    "coffee_table", "toilet", "flower", "book", "hill", "bench", "countertop", "stove",
    "palm", "kitchen_island", "computer", "swivel_chair", "boat", "bar", "arcade_machine",
    "hovel", "bus", "towel", "light", "truck", "tower", "chandelier", "awning",
    "streetlight", "booth", "television_receiver", "airplane", "dirt_track", "apparel",
    "pole", "land", "bannister", "escalator", "ottoman", "bottle", "buffet", "poster",
    "stage", "van", "ship", "fountain", "conveyer_belt", "canopy", "washer", "plaything",
    "swimming_pool", "stool", "barrel", "basket", "waterfall", "tent", "bag", "minibike",
    "cradle", "oven", "ball", "food", "step", "tank", "trade_name", "microwave", "pot",
    "animal", "bicycle", "lake", "dishwasher", "screen", "blanket", "sculpture", "hood",
    "sconce", "vase", "traffic_light", "tray", "ashcan", "fan", "pier", "crt_screen",
    "plate", "monitor", "bulletin_board", "shower", "radiator", "glass", "clock", "flag",
)  # fmt: skip

SODA_VOC = Layout(
    name="voc",
    description=(
        "SODA release folder InfraredSemanticLabel/ (VOC style, made with labelme2voc): "
        "JPEGImages/*.jpg, SegmentationClassPNG/*.png (palette PNG, value = class id, "
        "255 = unlabelled), train_infrared.txt / test_infrared.txt (one file stem a line). "
        "The same folders the UNIP config reads. The release also carries other label "
        "folders (e.g. SegmentationClassOne, used by FTNet) that are not read."
    ),
    img_dir="JPEGImages",
    ann_dir="SegmentationClassPNG",
    img_suffix=".jpg",
    ann_suffix=".png",
    splits={"train": "train_infrared.txt", "test": "test_infrared.txt"},
    nested=("InfraredSemanticLabel",),
)

_MFNET_SPLITS = {s: f"{s}.txt" for s in ("train", "val", "test", "val_test")}

MFNET_RGBT = Layout(
    name="rgbt",
    description=(
        "MFNet release folder ir_seg_dataset/: images/*.png are 4-channel RGB-T PNGs "
        "(R, G, B, thermal); the thermal channel (the 4th) is used. labels/*.png hold "
        "class ids 0-8; train.txt / val.txt / test.txt list file stems (val_test.txt in "
        "some redistributions)."
    ),
    img_dir="images",
    ann_dir="labels",
    img_suffix=".png",
    ann_suffix=".png",
    splits=_MFNET_SPLITS,
    image_mode="thermal_of_rgbt",
    nested=("ir_seg_dataset",),
)

MFNET_THERMAL = Layout(
    name="thermal",
    description=(
        "Thermal-only copy read by the UNIP config (MFNet_thermal/): thermal_imgs/*.png "
        "(single-channel), labels/*.png, train.txt, val_test.txt (validation during "
        "training), test.txt; val.txt where present."
    ),
    img_dir="thermal_imgs",
    ann_dir="labels",
    img_suffix=".png",
    ann_suffix=".png",
    splits=_MFNET_SPLITS,
    nested=("MFNet_thermal",),
)

SCUT_UNIP = Layout(
    name="unip",
    description=(
        "SCUT-Seg as the UNIP config reads it: images/*.jpg, labels/*.png (class ids "
        "0-9), train.txt / val.txt (one file stem a line; val is the 665-image test set)."
    ),
    img_dir="images",
    ann_dir="labels",
    img_suffix=".jpg",
    ann_suffix=".png",
    splits={"train": "train.txt", "val": "val.txt"},
)

ADE20K_MMSEG = Layout(
    name="mmseg",
    description=(
        "ADEChallengeData2016 as released (and read by mmseg): images/{training,"
        "validation}/*.jpg, annotations/{training,validation}/*.png; 0 = other/unlabelled."
    ),
    img_dir="images",
    ann_dir="annotations",
    img_suffix=".jpg",
    ann_suffix=".png",
    splits={"train": "training", "val": "validation"},
    image_mode="rgb",
    by_dir=True,
    nested=("ADEChallengeData2016",),
)

NYUV2_UNIP = Layout(
    name="unip",
    description=(
        "NYUDepthv2 as the UNIP config reads it: Depth/*.png, Lable_single_channel/*.png "
        "(the release's spelling; 0 = unlabelled, 1-40 = classes), train_depth.txt / "
        "test_depth.txt (file stems). 16-bit depth PNGs are reduced to 8 bits by >> 8, as "
        "OpenCV's colour loader in mmseg does."
    ),
    img_dir="Depth",
    ann_dir="Lable_single_channel",
    img_suffix=".png",
    ann_suffix=".png",
    splits={"train": "train_depth.txt", "test": "test_depth.txt"},
)

SUNRGBD_UNIP = Layout(
    name="unip",
    description=(
        "SUN RGB-D as the UNIP config reads it: Depth/*.png, labels/*.png (0 = unlabelled, "
        "1-37 = classes), train_depth.txt / test_depth.txt (file stems)."
    ),
    img_dir="Depth",
    ann_dir="labels",
    img_suffix=".png",
    ann_suffix=".png",
    splits={"train": "train_depth.txt", "test": "test_depth.txt"},
)

BUILTIN_DATASETS: tuple[DatasetInfo, ...] = (
    DatasetInfo(
        name="soda",
        title="SODA (thermal infrared)",
        classes=SODA_CLASSES,
        modality="infrared",
        mean=INFRARED_SEG_MEAN,
        std=INFRARED_SEG_STD,
        layouts=(SODA_VOC,),
        splits=("train", "test"),
        default_eval_split="test",
        published_counts={"train": 1168, "test": 1000},
        protocol_defaults=_schedule(1500, 14400, 800),
    ),
    DatasetInfo(
        name="mfnet_thermal",
        title="MFNet-T (thermal channel of MFNet RGB-T)",
        classes=MFNET_CLASSES,
        modality="infrared",
        mean=INFRARED_SEG_MEAN,
        std=INFRARED_SEG_STD,
        layouts=(MFNET_RGBT, MFNET_THERMAL),
        splits=("train", "val", "test", "val_test"),
        default_eval_split="test",
        published_counts={"train": 784, "val": 392, "test": 393},
        protocol_defaults=_schedule(1000, 9800, 700),
        notes="Class 0 (unlabelled) is a class, as in the UNIP config (no ignored label).",
    ),
    DatasetInfo(
        name="scut_seg",
        title="SCUT-Seg (thermal infrared, night driving)",
        classes=SCUT_SEG_CLASSES,
        modality="infrared",
        mean=INFRARED_SEG_MEAN,
        std=INFRARED_SEG_STD,
        # The release (MCNet: images/, gt_instance/*_labelIds.png) stores Cityscapes-style
        # ids (road = 7, person = 24, ...), not 0-9: `data prepare scut_seg` converts it.
        layouts=(SCUT_UNIP,),
        splits=("train", "val"),
        default_eval_split="val",
        published_counts={"train": 1345, "val": 665},
        protocol_defaults=_schedule(1700, 16800, 800),
    ),
    DatasetInfo(
        name="ade20k",
        title="ADE20K (RGB, 150 classes)",
        classes=ADE20K_CLASSES,
        modality="rgb",
        mean=IMAGENET_MEAN,
        std=IMAGENET_STD,
        layouts=(ADE20K_MMSEG,),
        splits=("train", "val"),
        default_eval_split="val",
        reduce_zero_label=True,
        published_counts={"train": 20210, "val": 2000},
        protocol_defaults=_schedule(1500, 75000, 1000),
    ),
    DatasetInfo(
        name="nyuv2_depth",
        title="NYUv2 (depth, 40 classes)",
        classes=NYUV2_CLASSES,
        modality="depth",
        mean=DEPTH_MEAN,
        std=DEPTH_STD,
        layouts=(NYUV2_UNIP,),
        splits=("train", "test"),
        default_eval_split="test",
        reduce_zero_label=True,
        crop_size=DEPTH_CROP,
        scale=DEPTH_SCALE,
        published_counts={"train": 795, "test": 654},
        protocol_defaults=_schedule(1000, 9800, 700, **_DEPTH_CROPS),
        notes=(
            "40 classes with label 0 ignored, as the protocol states; the UNIP config "
            "instead lists a '_background_' class 0 (41 classes, no reduce_zero_label)."
        ),
    ),
    DatasetInfo(
        name="sunrgbd_depth",
        title="SUN RGB-D (depth, 37 classes)",
        classes=SUNRGBD_CLASSES,
        modality="depth",
        mean=DEPTH_MEAN,
        std=DEPTH_STD,
        layouts=(SUNRGBD_UNIP,),
        splits=("train", "test"),
        default_eval_split="test",
        reduce_zero_label=True,
        crop_size=DEPTH_CROP,
        scale=DEPTH_SCALE,
        published_counts={"train": 5285, "test": 5050},
        protocol_defaults=_schedule(6000, 65000, 1000, **_DEPTH_CROPS),
        notes=(
            "37 classes with label 0 ignored, as the protocol states; the UNIP config "
            "lists a '_background_' class 0 (38 classes, no reduce_zero_label)."
        ),
    ),
)
