"""The one decoder (every path turns encoded bytes into resized uint8 RGB here) and the tf.data pipelines that
training, evaluation, the feature cache, export checks and predict share."""

from __future__ import annotations

import functools
from pathlib import Path

import numpy as np
import tensorflow as tf
from PIL import Image, ImageOps

from tfl.backend import native_stderr_held
from tfl.data import png_bytes_of, rgb_image
from tfl.errors import TflError
from tfl.split import Split

DECODER_VERSION = 5  # changes whenever the decoder gives other pixels (2: EXIF orientation, 3: bilinear shrinking,
# 4: libjpeg's accurate DCT, 5: bilinear with pixel corners mapped to corners); part of the feature cache key
MEMORY_CACHE_LIMIT_BYTES = 3 * 2**30  # decoded images beyond this are cached on disk instead

REDUCTION_RATIOS = (1, 2, 4, 8)  # the scales libjpeg can decode a JPEG at; other images are boxed down alike


def reduction_index(short_side: tf.Tensor, image_size: int) -> tf.Tensor:
    """Index into REDUCTION_RATIOS of the largest ratio that keeps the short side at least `image_size`."""
    return tf.add_n([tf.cast(short_side >= ratio * image_size, tf.int32) for ratio in REDUCTION_RATIOS[1:]])


def resize_pixels(image: tf.Tensor, image_size: int) -> tf.Tensor:
    """Resize uint8 RGB pixels to a square of `image_size` (the same in training, predict and the SavedModel)."""
    height, width = tf.shape(image)[0], tf.shape(image)[1]

    def resize():
        ratio = tf.gather(REDUCTION_RATIOS, reduction_index(tf.minimum(height, width), image_size))
        # A large image first averages boxes of 2x2, 4x4 or 8x8 pixels, as a large JPEG's reduced-scale decode does
        # (so a PNG and a JPEG of one photo get nearly the same pixels, and no pixel is skipped). Then plain
        # bilinear with output pixel (i, j) read at (i * h / size, j * w / size): MediaPipe Tasks' CPU
        # preprocessing maps the photo's corners to the tensor's (OpenCV's warpPerspective), as TF.js's
        # resizeBilinear does by default. With half-pixel centres (tf.image.resize), every pixel sat a fraction of
        # a pixel away from MediaPipe's, and its float32 file agreed with the Keras model on 97.0% of cats5; on
        # MediaPipe's mapping the same model agreed on 100% (benchmarks/README.md, "Decoder 5").
        boxed = tf.cond(ratio > 1, lambda: tf.image.resize(image, [-(-height // ratio), -(-width // ratio)], "area"),
                        lambda: tf.cast(image, tf.float32))
        resized = tf.raw_ops.ResizeBilinear(images=boxed[None], size=[image_size, image_size], align_corners=False,
                                            half_pixel_centers=False)[0]
        return tf.cast(tf.clip_by_value(tf.round(resized), 0, 255), tf.uint8)

    # A photo already at the size is left alone: resizing would give back the same pixels at the cost of half a
    # decode.
    pixels = tf.cond((height == image_size) & (width == image_size), lambda: tf.cast(image, tf.uint8), resize)
    pixels.set_shape([image_size, image_size, 3])
    return pixels


def decode_encoded(data: tf.Tensor, image_size: int) -> tf.Tensor:
    """Encoded JPEG/PNG/GIF/BMP/WebP bytes to resized uint8 RGB (also inside the exported SavedModel)."""
    image = tf.io.decode_image(data, channels=3, expand_animations=False, dtype=tf.uint8)
    image.set_shape([None, None, 3])
    return resize_pixels(image, image_size)


# libjpeg's accurate integer DCT, as Pillow, MediaPipe and most decoders use; TensorFlow's default is the fast one,
# about a level per pixel away from them. On the fourth apps run's cats5 model it took MediaPipe's float32 file's
# agreement with tfl's pixels from 98.0% to 99.5%, flowers' from 99.2% to 99.9% (benchmarks/README.md).
JPEG_DCT = "INTEGER_ACCURATE"


def decode_jpeg_reduced(data: tf.Tensor, image_size: int) -> tf.Tensor:
    """Decode a JPEG at 1/2, 1/4 or 1/8 scale in the DCT domain when it stays at least `image_size` on its short
    side (a 12 MP photo for a 224 px model decodes about 8x faster); not resized yet."""
    short_side = tf.reduce_min(tf.io.extract_jpeg_shape(data)[:2])
    image = tf.switch_case(reduction_index(short_side, image_size),
                           [lambda ratio=ratio: tf.io.decode_jpeg(data, channels=3, ratio=ratio,
                                                                  dct_method=JPEG_DCT)
                            for ratio in REDUCTION_RATIOS])
    image.set_shape([None, None, 3])
    return image


EXIF_SEARCH_BYTES = 65536  # the APP1 segment that holds EXIF comes first in a JPEG, within its first 64 KiB
EXIF_IFD_BYTES = 4096  # of the TIFF structure read: the header and IFD0, where the orientation tag lives
EXIF_MAX_ENTRIES = 64
EXIF_ORIENTATION_TAG = 0x0112


def exif_orientation(data: tf.Tensor) -> tf.Tensor:
    """The EXIF orientation (1-8; 1 when there is none) of encoded JPEG bytes, read with TensorFlow ops only, so
    that the SavedModel's bytes signature reads it too: the header after 'Exif\\0\\0', then IFD0's entries."""
    parts = tf.strings.split(tf.strings.substr(data, 0, EXIF_SEARCH_BYTES), sep="Exif\x00\x00", maxsplit=1)
    tiff = tf.cond(tf.size(parts) > 1, lambda: parts[-1], lambda: tf.constant(b""))
    raw = tf.io.decode_raw(tf.strings.substr(tiff, 0, EXIF_IFD_BYTES), tf.uint8)
    octets = tf.cast(tf.pad(raw, [[0, EXIF_IFD_BYTES - tf.size(raw)]]), tf.int32)
    little = (octets[0] == 73) & (octets[1] == 73)  # "II": Intel byte order; "MM": Motorola

    def at(index):
        return tf.gather(octets, tf.clip_by_value(index, 0, EXIF_IFD_BYTES - 1))

    def u16(index):
        return tf.where(little, at(index) + 256 * at(index + 1), 256 * at(index) + at(index + 1))

    def u32(index):
        return tf.where(little, u16(index) + 65536 * u16(index + 2), 65536 * u16(index) + u16(index + 2))

    ifd = u32(4)
    entries = ifd + 2 + 12 * tf.range(EXIF_MAX_ENTRIES)
    is_orientation = (tf.range(EXIF_MAX_ENTRIES) < u16(ifd)) & (u16(entries) == EXIF_ORIENTATION_TAG)
    value = tf.reduce_max(tf.where(is_orientation, u16(entries + 8), 0))
    valid = (u16(2) == 42) & (ifd >= 8) & (value >= 1) & (value <= 8)
    return tf.where(valid, value, 1)


def upright(image: tf.Tensor, orientation: tf.Tensor) -> tf.Tensor:
    """An image turned as EXIF `orientation` says (as Pillow's ImageOps.exif_transpose and photo viewers do), before
    it is resized: resizing maps the photo's top-left corner to the output's, so it is resized upright, as an app
    resizes the upright photo it shows."""
    def transposed():
        return tf.transpose(image, [1, 0, 2])

    return tf.switch_case(orientation - 1, [
        lambda: image,
        lambda: tf.reverse(image, [1]),  # 2: mirrored
        lambda: tf.reverse(image, [0, 1]),  # 3: upside down
        lambda: tf.reverse(image, [0]),  # 4: mirrored upside down
        transposed,  # 5
        lambda: tf.reverse(transposed(), [1]),  # 6: taken with the phone turned right (turn 90 clockwise)
        lambda: tf.reverse(transposed(), [0, 1]),  # 7
        lambda: tf.reverse(transposed(), [0]),  # 8: turned left (turn 90 anticlockwise)
    ])


def decode_image_bytes(data: tf.Tensor, image_size: int) -> tf.Tensor:
    """THE decoder: every path (training, evaluation, export checks, predict, the SavedModel's bytes signature)
    turns encoded bytes into resized uint8 RGB here, so a file gets the same pixels whichever way it comes in.
    Large JPEGs decode at reduced scale, everything else in full; JPEGs are turned upright by their EXIF
    orientation, as phone photos need."""
    return tf.cond(tf.io.is_jpeg(data),
                   lambda: resize_pixels(upright(decode_jpeg_reduced(data, image_size), exif_orientation(data)),
                                          image_size),
                   lambda: decode_encoded(data, image_size))


@functools.cache
def compiled_decoder(image_size: int) -> tf.types.experimental.PolymorphicFunction:
    """decode_image_bytes as one TensorFlow graph per image size, traced once per process: run eagerly, its
    conditions and EXIF reads cost about 12 ms a photo against 0.7 ms as a graph (predict, export checks and int8
    calibration decode photo by photo), and each tf.data pipeline calls it instead of tracing the decoder again."""
    return warmed_up(tf.function(lambda data: decode_image_bytes(data, image_size),
                                 input_signature=[tf.TensorSpec([], tf.string)]),
                     tf.io.encode_png(tf.zeros([2, 2, 3], tf.uint8)))


@functools.cache
def compiled_resize(image_size: int) -> tf.types.experimental.PolymorphicFunction:
    """resize_pixels as one graph per image size (for arrays given to predict)."""
    return warmed_up(tf.function(lambda pixels: resize_pixels(pixels, image_size),
                                 input_signature=[tf.TensorSpec([None, None, 3], tf.uint8)]),
                     tf.zeros([2, 2, 3], tf.uint8))


def warmed_up(function, example):
    """`function`, run once on `example` with native stderr held: TensorFlow's graph optimizer prints a oneDNN line
    the first time a graph with uint8 operations runs, which a user of `tfl predict` should not see."""
    with native_stderr_held():
        function(example)
    return function


def decode_image_file(path: tf.Tensor, image_size: int) -> tf.Tensor:
    pixels = compiled_decoder(image_size)(tf.io.read_file(path))
    pixels.set_shape([image_size, image_size, 3])
    return pixels


def label_array(labels: list, num_classes: int | None) -> np.ndarray:
    """Integer labels as they are; lists of labels (several per photo) as multi-hot rows."""
    if labels and isinstance(labels[0], list):
        from tfl.multilabel import multi_hot

        return multi_hot(labels, num_classes)
    return np.asarray(labels, dtype=np.int32)


def decoded_images(split: Split, image_size: int, shuffle_seed: int | None = None,
                   num_classes: int | None = None) -> tf.data.Dataset:
    """(uint8 image, label) pairs, resized, the label an integer or a multi-hot row; file order shuffled once so a
    cache holds mixed classes."""
    if split.source is not None:
        return split.source.map(lambda x, y: (resize_pixels(x, image_size), y), num_parallel_calls=tf.data.AUTOTUNE)
    order = np.arange(len(split))
    if shuffle_seed is not None:
        order = np.random.default_rng(shuffle_seed).permutation(order)
    paths = [split.paths[i] for i in order]
    labels = [split.labels[i] for i in order]
    dataset = tf.data.Dataset.from_tensor_slices((paths, label_array(labels, num_classes)))
    return dataset.map(lambda p, y: (decode_image_file(p, image_size), y), num_parallel_calls=tf.data.AUTOTUNE)


def cache(dataset: tf.data.Dataset, n_images: int, image_size: int, cache_dir: Path | None) -> tf.data.Dataset:
    if n_images * image_size * image_size * 3 <= MEMORY_CACHE_LIMIT_BYTES or cache_dir is None:
        return dataset.cache()
    cache_dir.mkdir(parents=True, exist_ok=True)
    return dataset.cache(str(cache_dir / f"images_{image_size}px_{n_images}"))


def make_pipeline(split: Split, num_classes: int, image_size: int, batch_size: int, training: bool,
                  augmenter=None, mixer=None, seed: int = 42, cache_dir: Path | None = None,
                  repeat: bool = False, service: str | None = None) -> tf.data.Dataset:
    """Batches of (float32 pixels 0..255, one-hot or multi-hot labels); augmentation on training data only. `repeat`: an
    endless stream of full batches (distributed training counts steps, not passes). `service`: a tf.data service
    dispatcher's address (tfl/data_service.py), whose workers then run the pipeline, decoding every pass (their
    cache would be their own). (Eleven parameters: the split and its size are required, each other one is an
    optional stage of the pipeline.)"""
    dataset = decoded_images(split, image_size, shuffle_seed=seed if training else None, num_classes=num_classes)
    if service is None:
        dataset = cache(dataset, len(split), image_size, cache_dir)
    if training:
        dataset = dataset.shuffle(min(len(split), 4096), seed=seed, reshuffle_each_iteration=True)
    if repeat:
        dataset = dataset.repeat()
    dataset = dataset.batch(batch_size)
    dataset = dataset.map(lambda x, y: (tf.cast(x, tf.float32), tf.one_hot(y, num_classes) if y.shape.rank == 1
                                        else y), num_parallel_calls=tf.data.AUTOTUNE)
    if training and augmenter is not None:
        dataset = dataset.map(lambda x, y: (augmenter(x), y), num_parallel_calls=tf.data.AUTOTUNE)
    if training and mixer is not None:
        dataset = dataset.map(mixer, num_parallel_calls=tf.data.AUTOTUNE)
    if service is not None:
        from tfl.data_service import served

        dataset = served(dataset, service)
    return dataset.prefetch(tf.data.AUTOTUNE)


def pixels_of_image(image, image_size: int) -> np.ndarray:
    """A PIL image (turned upright by its EXIF orientation) or an RGB, greyscale or RGBA array of 0..255, as resized
    uint8 RGB, resized as files are."""
    if isinstance(image, Image.Image):
        image = np.asarray(rgb_image(ImageOps.exif_transpose(image)))
    array = np.asarray(image)
    if array.ndim == 2:
        array = np.repeat(array[..., np.newaxis], 3, axis=-1)
    if array.ndim != 3 or array.shape[-1] not in (1, 3, 4) or not np.issubdtype(array.dtype, np.number) \
            or 0 in array.shape:
        raise TflError(f"An image array must be height x width x 3 (RGB), x 4 (RGBA) or height x width (grey), of "
                       f"values 0..255; got {array.dtype} of shape {list(array.shape)}.")
    array = np.repeat(array, 3, axis=-1) if array.shape[-1] == 1 else array[..., :3]
    pixels = np.clip(np.round(array.astype(np.float32)), 0, 255).astype(np.uint8)
    return compiled_resize(image_size)(tf.constant(pixels)).numpy()


def load_image_for_predict(path: str, image_size: int) -> np.ndarray:
    """Any image file to resized uint8 RGB, exactly as training saw it: TensorFlow's decoder, with Pillow only
    re-encoding what TensorFlow cannot read (TIFF, ...)."""
    data = Path(path).read_bytes()
    try:
        pixels = compiled_decoder(image_size)(tf.constant(data))
    except tf.errors.InvalidArgumentError:
        pixels = compiled_decoder(image_size)(tf.constant(png_bytes_of(path)))
    return pixels.numpy()


def padded_batches(split: Split, num_classes: int, image_size: int, batch_size: int):
    """(float32 pixels padded with zeros to a full batch, label rows, how many rows are photos) of each batch of a
    split, in order: a model called on them is traced once (a last, smaller batch would trace it again)."""
    for images, labels in make_pipeline(split, num_classes, image_size, batch_size, training=False):
        pixels, count = np.asarray(images), len(labels)
        if count < batch_size:
            pixels = np.concatenate([pixels, np.zeros((batch_size - count, *pixels.shape[1:]), pixels.dtype)])
        yield pixels, np.asarray(labels), count


def readable_batches(paths: list[str], image_size: int, batch_size: int):
    """Batches of (paths, uint8 pixels) of the files that decode, as predict decodes them; the others are left out
    (a folder of photos of anything may hold other files)."""
    names, pixels = [], []
    for path in paths:
        try:
            pixels.append(load_image_for_predict(path, image_size))
        except Exception:  # Pillow and TensorFlow raise several kinds for files that are not images
            continue
        names.append(path)
        if len(pixels) >= batch_size:
            yield names, np.stack(pixels)
            names, pixels = [], []
    if pixels:
        yield names, np.stack(pixels)
