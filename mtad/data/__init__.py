"""Datasets for multi-class anomaly detection: listing, reading, demo data.

``open_dataset`` is the entry point; ``model_input`` (torch-free) turns a photo
into the model's input exactly as training does (``prepare_image`` adds the
model's normalisation, ``PreProcessor``, for a training sample);
``LAYOUT_NAMES``, ``normalise_layout``, ``check_data_options`` and
``check_on_error`` validate config values with the messages ``open_dataset`` gives;
``make_demo_dataset`` writes the offline demo data. Names are imported on
first use, so that ``mtad synth`` does not pay for torch and listing does not
pay for scikit-image.
"""
from mtad._lazy import lazy_namespace

_API = {
    "AnomalyDataset": "dataset",
    "open_dataset": "dataset",
    "open_split": "dataset",
    "DataError": "errors",
    "DataWarning": "errors",
    "ImageTooLarge": "errors",
    "Problem": "errors",
    "check_on_error": "errors",
    "IMAGE_EXTENSIONS": "imageio",
    "binarise_mask": "imageio",
    "read_header": "imageio",
    "read_mask": "imageio",
    "read_rgb": "imageio",
    "LAYOUTS": "layouts",
    "LAYOUT_NAMES": "layouts",
    "check_data_options": "layouts",
    "detect_layout": "layouts",
    "list_records": "layouts",
    "normalise_layout": "layouts",
    "Record": "records",
    "IMAGENET_MEAN": "transforms",
    "IMAGENET_STD": "transforms",
    "MODEL_INPUT": "transforms",
    "PreProcessor": "preprocess",
    "model_input": "transforms",
    "check_sizes": "transforms",
    "denormalise": "transforms",
    "prepare_image": "transforms",
    "prepare_mask": "transforms",
    "resize_rgb": "transforms",
    "to_unit_float": "transforms",
    "make_demo_dataset": "synth",
}

__all__ = sorted(_API)
__getattr__, __dir__ = lazy_namespace(__name__, _API)
