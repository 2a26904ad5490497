import io
import os
from pathlib import Path

import numpy as np
import pytest
import tensorflow as tf
from PIL import Image

import tfl.pipeline as pipeline_module
from tests.conftest import make_image, write_class_folders
from tfl.augment import build_augmenter, build_mixer
from tfl.data import Split, load_data, load_image_folder, stratified_split
from tfl.pipeline import make_pipeline, resize_pixels
from tfl.errors import TflError
from tfl.scan import scan_file


def jpeg_bytes(image, **kwargs):
    buffer = io.BytesIO()
    image.save(buffer, "JPEG", **kwargs)
    return buffer.getvalue()


@pytest.fixture
def messy_folder(tmp_path):
    """Two classes with every kind of odd file a real photo folder has."""
    root = write_class_folders(tmp_path / "messy", per_class=4,
                               classes={"cats": (200, 40, 40), "dogs": (40, 60, 200)})
    cats = root / "cats"
    good = make_image((200, 40, 40), seed=99)
    (cats / "truncated.jpg").write_bytes(jpeg_bytes(good)[:400])
    (cats / "empty.jpg").write_bytes(b"")
    (cats / "notes.jpg").write_text("this is not an image")
    (cats / "readme.txt").write_text("hello")
    (cats / ".DS_Store").write_bytes(b"\x00\x01binary")
    good.save(cats / "png_named.jpg", "PNG")
    good.save(cats / "gif_named.jpg", "GIF")
    good.save(cats / "bmp_named.jpg", "BMP")
    good.save(cats / "webp_named.jpg", "WEBP")
    good.convert("L").save(cats / "grey.jpg")
    good.convert("RGBA").save(cats / "rgba.png")
    good.convert("CMYK").save(cats / "cmyk.jpg")
    good.convert("P").save(cats / "palette.png")
    good.save(cats / "scan.tiff", "TIFF")
    (root / ".hidden_class").mkdir()
    return root


def test_scan_skips_bad_files_and_reports_why(messy_folder, tmp_path):
    data = load_image_folder(messy_folder, val_split=0.25, seed=0, converted_dir=tmp_path / "converted")
    reasons = {item["path"].split("/")[-1]: item["reason"] for item in data.report["skipped"]}
    assert set(reasons) == {"truncated.jpg", "empty.jpg", "notes.jpg", "readme.txt"}
    assert reasons["empty.jpg"] == "empty file"
    assert reasons["notes.jpg"] == "not an image"
    assert "unreadable" in reasons["truncated.jpg"]
    assert data.class_names == ["cats", "dogs"]  # .hidden_class ignored
    all_paths = data.train.paths + data.val.paths
    assert not any(".DS_Store" in p for p in all_paths)
    assert sum(data.report["counts"]["train"].values()) + sum(data.report["counts"]["val"].values()) == 4 + 9 + 4
    assert [c["path"].split("/")[-1] for c in data.report["converted"]] == ["scan.tiff"]


def test_every_usable_file_decodes_to_rgb_in_the_pipeline(messy_folder, tmp_path):
    data = load_image_folder(messy_folder, val_split=0.25, seed=0, converted_dir=tmp_path / "converted")
    everything = Split(paths=data.train.paths + data.val.paths, labels=data.train.labels + data.val.labels)
    batches = list(make_pipeline(everything, 2, 24, batch_size=64, training=False))
    images, labels = batches[0]
    assert images.shape == (17, 24, 24, 3) and images.dtype.name == "float32"
    assert labels.shape == (17, 2)
    assert float(np.min(images)) >= 0 and float(np.max(images)) <= 255


def test_truncated_jpeg_is_found_by_the_scan(tmp_path):
    path = tmp_path / "t.jpg"
    path.write_bytes(jpeg_bytes(make_image((1, 2, 3), size=64))[:-300])
    assert scan_file(str(path)).problem is not None


def test_stratified_split_is_seeded_and_keeps_every_class():
    split = Split(paths=[f"f{i}" for i in range(30)], labels=[0] * 20 + [1] * 10)
    train, val = stratified_split(split, 0.2, seed=3)
    again_train, again_val = stratified_split(split, 0.2, seed=3)
    assert val.paths == again_val.paths and train.paths == again_train.paths
    assert sorted(val.labels) == [0] * 4 + [1] * 2
    assert set(train.paths).isdisjoint(val.paths) and len(train) + len(val) == 30
    _, other_val = stratified_split(split, 0.2, seed=4)
    assert other_val.paths != val.paths


def test_train_val_test_folders_are_used_as_given(tmp_path):
    root = tmp_path / "layout"
    write_class_folders(root / "train", per_class=5)
    write_class_folders(root / "validation", per_class=2, seed=50)
    write_class_folders(root / "test", per_class=3, seed=80)
    data = load_image_folder(root)
    assert (len(data.train), len(data.val), len(data.test)) == (15, 6, 9)
    assert data.report["layout"] == "split folders: train/ (training), validation/ (validation), test/ (held-out test)"


@pytest.mark.parametrize("names", [("Train", "Valid", None), ("train", "dev", "TEST"), ("TRAINING", "val", "Testing")])
def test_split_folders_are_recognised_in_any_case(tmp_path, names):
    train_name, val_name, test_name = names
    write_class_folders(tmp_path / train_name, per_class=5)
    write_class_folders(tmp_path / val_name, per_class=2, seed=50)
    if test_name:
        write_class_folders(tmp_path / test_name, per_class=3, seed=80)
    data = load_image_folder(tmp_path)
    assert data.class_names == ["blue", "green", "red"]
    assert (len(data.train), len(data.val)) == (15, 6)
    assert (len(data.test) if data.test else 0) == (9 if test_name else 0)
    assert f"{val_name}/ (validation)" in data.report["layout"]


def test_train_and_test_folders_hold_out_validation_from_train(tmp_path):
    """Kaggle's train/ + test/: not two classes 'test' and 'train', but training photos and a test set."""
    write_class_folders(tmp_path / "train", per_class=10)
    write_class_folders(tmp_path / "test", per_class=3, seed=80)
    data = load_image_folder(tmp_path, val_split=0.2, seed=1)
    assert data.class_names == ["blue", "green", "red"]
    assert (len(data.train), len(data.val), len(data.test)) == (24, 6, 9)
    assert set(data.val.paths).isdisjoint(data.train.paths)
    assert all("/train/" in p for p in data.val.paths)
    assert data.report["layout"] == ("split folders: train/ (training, 20% of it held out for validation, seed 1), "
                                     "test/ (held-out test)")


def test_unlabelled_test_folder_is_no_test_set(tmp_path):
    write_class_folders(tmp_path / "train", per_class=6)
    (tmp_path / "test").mkdir()
    make_image((1, 2, 3)).save(tmp_path / "test" / "unknown.jpg")
    with pytest.warns(UserWarning, match="no test set"):
        data = load_image_folder(tmp_path)
    assert data.test is None and len(data.val) == 3


@pytest.mark.parametrize("folders, message", [
    (("seg_train", "seg_test"), "named like dataset splits \\(seg_test, seg_train\\)"),
    (("train_set", "val_set"), "named like dataset splits"),
    (("val", "test"), "no training folder"),
    (("train", "Train"), "two training folders"),
])
def test_split_like_folders_that_are_not_recognised_stop_with_a_message(tmp_path, folders, message):
    for name in folders:
        write_class_folders(tmp_path / name, per_class=3)
    with pytest.raises(TflError, match=message):
        load_image_folder(tmp_path)


def test_a_class_named_like_a_split_among_many_is_still_a_class(tmp_path):
    root = write_class_folders(tmp_path / "lab", per_class=4, classes={"test_tube": (1, 2, 3), "flask": (9, 9, 9),
                                                                      "beaker": (200, 9, 9)})
    assert load_image_folder(root).class_names == ["beaker", "flask", "test_tube"]


def test_val_class_unknown_to_train_is_an_error(tmp_path):
    root = tmp_path / "layout"
    write_class_folders(root / "train", per_class=3)
    write_class_folders(root / "val", per_class=2, classes={"red": (1, 2, 3), "purple": (9, 9, 9)})
    with pytest.raises(TflError, match="purple"):
        load_image_folder(root)


def test_fewer_than_two_classes_is_an_error(tmp_path):
    write_class_folders(tmp_path / "one", per_class=3, classes={"only": (1, 2, 3)})
    with pytest.raises(TflError, match="at least two class subfolders.*found only 'only'"):
        load_image_folder(tmp_path / "one")


def test_class_without_usable_image_is_an_error(tmp_path):
    root = write_class_folders(tmp_path / "d", per_class=3, classes={"a": (1, 2, 3), "b": (9, 9, 9)})
    (root / "c").mkdir()
    (root / "c" / "broken.jpg").write_text("nope")
    with pytest.raises(TflError, match="Class folder\\(s\\) c .*no usable training image.*1 file\\(s\\) were skipped"):
        load_image_folder(root)


@pytest.mark.parametrize("make, message", [(lambda p: p / "missing", "does not exist"),
                                           (lambda p: p, "needs at least two class subfolders.*found none")])
def test_missing_or_empty_data_folder(tmp_path, make, message):
    with pytest.raises(TflError, match=message):
        load_image_folder(make(tmp_path))


def test_augmentation_changes_training_batches_only(tiny_folder):
    data = load_image_folder(tiny_folder, seed=0)
    augmenter = build_augmenter("strong", seed=1)
    train = next(iter(make_pipeline(data.val, 3, 32, 8, training=True, augmenter=augmenter, seed=0)))
    plain = next(iter(make_pipeline(data.val, 3, 32, 8, training=False, augmenter=augmenter)))
    reference = next(iter(make_pipeline(data.val, 3, 32, 8, training=False)))
    np.testing.assert_array_equal(plain[0], reference[0])  # validation data is never augmented
    assert train[0].shape == plain[0].shape
    assert not np.allclose(np.sort(np.asarray(train[0]).ravel()), np.sort(np.asarray(plain[0]).ravel()))


def test_mixup_and_cutmix_mix_labels(tiny_folder):
    data = load_image_folder(tiny_folder, seed=0)
    mixer = build_mixer(mixup_alpha=0.4, cutmix_alpha=1.0, seed=0)
    _, labels = next(iter(make_pipeline(data.train, 3, 32, 16, training=True, mixer=mixer)))
    labels = np.asarray(labels)
    np.testing.assert_allclose(labels.sum(axis=1), 1.0, rtol=1e-5)
    assert ((labels > 0.01) & (labels < 0.99)).any(), "mixing must produce soft labels"


def test_unknown_augment_preset_is_an_error():
    with pytest.raises(TflError, match="Unknown augment preset"):
        build_augmenter("extreme")


def test_large_jpegs_decode_at_reduced_scale_to_nearly_the_same_pixels(tmp_path):
    import tensorflow as tf

    from tfl.pipeline import JPEG_DCT, decode_image_file, resize_pixels

    small = tmp_path / "small.jpg"
    make_image((200, 40, 40), size=60, seed=3).save(small, quality=95)
    big = tmp_path / "big.jpg"
    make_image((40, 180, 60), size=64, seed=4).resize((1100, 900), Image.BILINEAR).save(big, quality=95)
    for path, tolerance in ((small, 0.0), (big, 4.0)):
        reduced = decode_image_file(tf.constant(str(path)), 64).numpy().astype(float)
        whole = tf.io.decode_jpeg(tf.io.read_file(str(path)), channels=3, dct_method=JPEG_DCT)
        full = resize_pixels(whole, 64).numpy().astype(float)
        assert reduced.shape == full.shape == (64, 64, 3)
        assert np.abs(reduced - full).mean() <= tolerance, path.name


def test_a_jpeg_decodes_to_the_same_pixels_as_pillows_and_mediapipes_libjpeg():
    """libjpeg's accurate DCT, as Pillow and MediaPipe decode: TensorFlow's default fast one is a level away."""
    import io

    import tensorflow as tf
    from PIL import Image

    from tfl.pipeline import decode_image_bytes

    buffer = io.BytesIO()
    make_image((120, 80, 200), size=96, seed=3).save(buffer, format="JPEG", quality=85)
    pillow = np.asarray(Image.open(io.BytesIO(buffer.getvalue())).convert("RGB")).astype(int)
    ours = decode_image_bytes(tf.constant(buffer.getvalue()), 96).numpy().astype(int)
    fast = tf.io.decode_jpeg(buffer.getvalue(), channels=3).numpy().astype(int)
    assert np.abs(ours - pillow).max() == 0
    assert np.abs(fast - pillow).mean() > 0.5, "TensorFlow's default DCT differs: the test would not see a change"


def test_jpeg_scale_is_the_largest_that_keeps_the_model_size():
    import tensorflow as tf

    from tfl.pipeline import REDUCTION_RATIOS, reduction_index

    cases = {(700, 224): 2, (900, 224): 4, (447, 224): 1, (448, 224): 2, (2000, 224): 8, (200, 224): 1, (1792, 224): 8}
    for (short_side, size), ratio in cases.items():
        assert REDUCTION_RATIOS[int(reduction_index(tf.constant(short_side), size))] == ratio, (short_side, size)


def corner_bilinear(image: np.ndarray, size: int) -> np.ndarray:
    """Reference: bilinear interpolation without antialiasing, output pixel i read at i * n / size (the photo's
    corners mapped to the output's), as MediaPipe Tasks' CPU preprocessing computes it."""
    def axis(n):
        x = np.clip(np.arange(size) * n / size, 0, n - 1)
        low = np.floor(x).astype(int)
        return low, np.minimum(low + 1, n - 1), x - low
    (y0, y1, fy), (x0, x1, fx) = axis(image.shape[0]), axis(image.shape[1])
    image = image.astype(np.float64)
    top = image[y0][:, x0] * (1 - fx)[None, :, None] + image[y0][:, x1] * fx[None, :, None]
    bottom = image[y1][:, x0] * (1 - fx)[None, :, None] + image[y1][:, x1] * fx[None, :, None]
    return top * (1 - fy)[:, None, None] + bottom * fy[:, None, None]


def test_resize_pixels_keeps_images_at_size_and_resizes_others_as_app_runtimes_do():
    rng = np.random.default_rng(0)
    square = tf.constant(rng.integers(0, 256, (32, 32, 3)).astype("uint8"))
    kept = resize_pixels(square, 32)
    np.testing.assert_array_equal(kept, square)
    wide = tf.constant(np.full((20, 64, 3), 77, "uint8"))
    resized = resize_pixels(wide, 32)
    assert resized.shape == (32, 32, 3) and resized.dtype == tf.uint8
    np.testing.assert_array_equal(resized, 77)
    for shape in [(60, 45, 3), (40, 90, 3), (20, 24, 3)]:  # shrinking under 2x, also one side more, and enlarging
        photo = rng.integers(0, 256, shape).astype("uint8")
        expected = corner_bilinear(photo, 32)
        np.testing.assert_allclose(resize_pixels(tf.constant(photo), 32).numpy(), expected, atol=0.51)
    stripes = np.zeros((128, 128, 3), "uint8")
    stripes[:, 3::4] = 252  # every fourth column: bilinear at 1/4 would sample between columns 4j+1 and 4j+2 only
    np.testing.assert_allclose(resize_pixels(tf.constant(stripes), 32), 63, atol=1)  # boxed 4x4 first: averaged in
    big = rng.integers(0, 256, (150, 200, 3)).astype("uint8")  # 2x boxes, then bilinear from 75x100
    boxed = big.reshape(75, 2, 100, 2, 3).mean(axis=(1, 3))
    np.testing.assert_allclose(resize_pixels(tf.constant(big), 64).numpy(), corner_bilinear(boxed, 64), atol=0.51)
    traced = tf.function(lambda image: resize_pixels(image, 32)).get_concrete_function(
        tf.TensorSpec([None, None, 3], tf.uint8))
    assert traced.output_shapes == (32, 32, 3), "batching needs a static shape"


def test_decoded_images_over_the_memory_limit_are_cached_on_disk(tiny_folder, tmp_path, monkeypatch):
    monkeypatch.setattr(pipeline_module, "MEMORY_CACHE_LIMIT_BYTES", 0)
    data = load_image_folder(tiny_folder, seed=0)
    dataset = make_pipeline(data.train, 3, 32, 4, training=False, cache_dir=tmp_path / "cache")
    first = [x.numpy() for x, _ in dataset]
    assert any(p.name.endswith(".index") for p in (tmp_path / "cache").iterdir()), "the cache is written to disk"
    for path in data.train.paths:  # the second epoch must read the cache, not the photos
        Path(path).unlink()
    second = [x.numpy() for x, _ in dataset]
    for a, b in zip(first, second, strict=True):
        np.testing.assert_array_equal(a, b)


def with_exif_orientation(jpeg: bytes, orientation: int, big_endian: bool) -> bytes:
    """The JPEG with an APP1 EXIF segment holding only the orientation tag, in either byte order."""
    order, mark = (">", b"MM") if big_endian else ("<", b"II")
    import struct

    tiff = mark + struct.pack(order + "HI", 42, 8) + struct.pack(order + "H", 1)
    tiff += struct.pack(order + "HHIHH", 0x0112, 3, 1, orientation, 0) + struct.pack(order + "I", 0)
    segment = b"Exif\x00\x00" + tiff
    return jpeg[:2] + b"\xff\xe1" + struct.pack(">H", len(segment) + 2) + segment + jpeg[2:]


@pytest.mark.parametrize("big_endian", [False, True])
def test_the_decoder_turns_photos_upright_as_pillow_does(big_endian):
    """Phone photos store pixels as the sensor saw them and an EXIF orientation; every viewer turns them."""
    from PIL import ImageOps

    from tfl.pipeline import decode_image_bytes, exif_orientation

    rng = np.random.default_rng(0)
    plain = jpeg_bytes(Image.fromarray(rng.integers(0, 255, (24, 40, 3), dtype=np.uint8)), quality=95)
    assert int(exif_orientation(tf.constant(plain))) == 1
    for orientation in range(1, 9):
        data = with_exif_orientation(plain, orientation, big_endian)
        assert int(exif_orientation(tf.constant(data))) == orientation
        turned = ImageOps.exif_transpose(Image.open(io.BytesIO(data)))
        buffer = io.BytesIO()
        turned.save(buffer, "PNG")
        expected = decode_image_bytes(tf.constant(buffer.getvalue()), 16).numpy().astype(int)
        got = decode_image_bytes(tf.constant(data), 16).numpy().astype(int)
        # turned before the resize, as the upright PNG is: the same pixels (measured 0.0); a wrong turn differs by
        # ~80 on noise, and a turn after the corner-mapped resize by a fraction of a pixel's shift
        assert np.abs(got - expected).mean() < 0.5, orientation


def test_a_damaged_exif_segment_is_read_as_no_orientation():
    from tfl.pipeline import exif_orientation

    plain = jpeg_bytes(make_image((1, 2, 3)))
    for junk in (b"Exif\x00\x00", b"Exif\x00\x00II*\x00\xff\xff\xff\xff", b"Exif\x00\x00MM\x00*\x00\x00\x00\x08\x00"):
        data = plain[:2] + b"\xff\xe1" + (len(junk) + 2).to_bytes(2, "big") + junk + plain[2:]
        assert int(exif_orientation(tf.constant(data))) == 1


def test_a_file_name_that_is_not_utf8_is_skipped_with_its_reason(tmp_path):
    """Issue 41.12: a Latin-1 file name (an old Windows archive) crashed tfl finetune, evaluate and check."""
    from tests.conftest import cli

    data = write_class_folders(tmp_path / "photos", per_class=4)
    (data / "red" / "red_0.jpg").rename(os.fsdecode(os.path.join(os.fsencode(data / "red"), b"caf\xe9.jpg")))
    loaded = load_image_folder(data, 0.25, 0)
    assert [item["reason"] for item in loaded.report["skipped"]] == [
        "its name is not valid UTF-8 (an old archive's encoding, say): rename it"]
    assert len(loaded.train) + len(loaded.val) == 11
    result = cli("check", data, "--no-probe", "--output", tmp_path / "runs", "--exclusions", tmp_path / "x.txt")
    assert result.exit_code == 0 and "caf\\xe9.jpg" in result.output
    (tmp_path / "latin1.txt").write_bytes(f"{data / 'red' / 'red_1.jpg'}  # café\n".encode("latin-1"))
    (tmp_path / "binary.txt").write_bytes(b"\x00\x01\x02")
    assert load_data(str(data), 0.25, 0, exclude=tmp_path / "latin1.txt").report["excluded"] == 1
    with pytest.raises(TflError, match="is not a text file"):
        load_data(str(data), 0.25, 0, exclude=tmp_path / "binary.txt")


def test_a_linked_subfolder_is_skipped_with_its_reason_and_a_label_only_in_validation_says_so(tmp_path):
    """Issue 41.21: symlinked subfolders inside a class folder were skipped without a word; a label found only on
    validation rows of a label file was told to 'remove the folders'."""
    data = write_class_folders(tmp_path / "photos", per_class=4)
    elsewhere = write_class_folders(tmp_path / "more", per_class=2)
    (data / "red" / "linked").symlink_to(elsewhere / "red", target_is_directory=True)
    loaded = load_image_folder(data, 0.25, 0)
    assert [Path(item["path"]).name for item in loaded.report["skipped"]] == ["linked"]
    assert "a link to a folder" in loaded.report["skipped"][0]["reason"]
    lines = ["file,label,split"] + [f"{p.relative_to(data)},{p.parent.name},{'val' if 'blue' in p.name else 'train'}"
                                    for p in sorted(data.glob("*/*.jpg"))]
    (data / "labels.csv").write_text("\n".join(lines) + "\n")
    with pytest.raises(TflError, match=r"Label\(s\) blue of .* only on validation or test rows.*remove their rows"):
        load_data(str(data / "labels.csv"), 0.25, 0)
