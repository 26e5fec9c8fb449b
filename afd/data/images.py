"""Loading photos as 8-bit RGB, tensor conversion, and the crops the data sets use.

Images are 8-bit RGB PIL images or float32 RGB tensors in [0, 1], (3, H, W) or (N, 3, H, W).
"""

from __future__ import annotations

import contextlib
import errno
import os
import stat
import warnings
from typing import BinaryIO, Iterable, Iterator

import numpy as np
import torch
from PIL import Image, ImageFile, ImageOps, JpegImagePlugin, UnidentifiedImageError

from afd.errors import ConfigError, ImageLoadError

# Crops move by whole 16x16 macroblocks: 8x8 DCT blocks for luma, and for 4:2:0 chroma too.
GRID = 16

# Decoded images are at most this many pixels (Pillow's default bomb limit, fixed here whatever
# another library sets Pillow's to). A larger JPEG (a 108-megapixel phone photo) is decoded at 1/2,
# 1/4 or 1/8 scale by libjpeg's DCT scaling, which never holds the full image; another format that
# large is refused. Anything over twice the limit is refused as a decompression bomb.
MAX_DECODED_PIXELS = 89_478_485
MAX_DECLARED_PIXELS = 2 * MAX_DECODED_PIXELS
# Resizing is bounded too: an image's shorter side is scaled to the requested size, so a 2 x 20000
# strip would become 256 x 2,560,000. Refused past this aspect ratio or pixel count.
MAX_ASPECT_RATIO = 16

_OS_REASONS = {
    errno.ENOENT: "file does not exist",
    errno.EISDIR: "is a directory",
    errno.EACCES: "permission denied",
    errno.EPERM: "permission denied",
    errno.ELOOP: "symlink loop",
    errno.ENXIO: "not a regular file (a socket or device)",
}
_FILE_KINDS = {stat.S_IFDIR: "is a directory", stat.S_IFIFO: "not a regular file (a FIFO)",
               stat.S_IFSOCK: "not a regular file (a socket)", stat.S_IFCHR: "not a regular file (a character device)",
               stat.S_IFBLK: "not a regular file (a block device)"}

# Pillow keeps 16-bit samples in these modes ("I" is what 16-bit PGM/PPM open as).
_SIXTEEN_BIT_MODES = {"I;16", "I;16L", "I;16B", "I;16N", "I"}
_ALPHA_MODES = {"RGBA", "RGBa", "LA", "PA"}


def load_image(path: str | os.PathLike) -> Image.Image:
    """Read an image file as a fully decoded 8-bit RGB image, upright per its EXIF orientation.

    Only regular files are read (a FIFO would block, a device never ends). Any problem with the
    file raises ImageLoadError naming the file and the reason.
    """
    try:
        # O_NONBLOCK: opening a FIFO must not wait for a writer; it is then refused below.
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | getattr(os, "O_CLOEXEC", 0))
    except OSError as e:
        raise ImageLoadError(path, open_error_reason(e)) from e
    info = os.fstat(fd)
    if not stat.S_ISREG(info.st_mode):
        os.close(fd)
        raise ImageLoadError(path, _FILE_KINDS.get(stat.S_IFMT(info.st_mode), "not a regular file"))
    if info.st_size == 0:  # also /proc's pseudo-files, which cannot seek to their end
        os.close(fd)
        raise ImageLoadError(path, "empty file (0 bytes)")
    with os.fdopen(fd, "rb") as f:
        return decode_image(f, path)


def open_error_reason(error: OSError) -> str:
    """The short reason an image file could not be opened, as ImageLoadError states it."""
    if error.errno in _OS_REASONS:
        return _OS_REASONS[error.errno]
    # fsspec file systems raise e.g. FileNotFoundError(path), with no errno.
    if isinstance(error, FileNotFoundError):
        return _OS_REASONS[errno.ENOENT]
    if isinstance(error, PermissionError):
        return _OS_REASONS[errno.EACCES]
    return error.strerror or str(error)


def decode_image(f: BinaryIO, name) -> Image.Image:
    """Decode an open, seekable binary file (local or remote) exactly as load_image does.

    `name` (the path or URL) is what ImageLoadError names.
    """
    try:
        if f.seek(0, os.SEEK_END) == 0:
            raise ImageLoadError(name, "empty file (0 bytes)")
        f.seek(0)
    except OSError as e:  # a stream that cannot seek
        raise ImageLoadError(name, f"cannot read it ({open_error_reason(e)})") from e
    img = _decode(f, name)
    try:
        return _to_rgb(img)
    except ValueError as e:  # a mode Pillow cannot convert (none of the file modes today)
        raise ImageLoadError(name, f"unsupported image mode {img.mode}") from e


@contextlib.contextmanager
def _strict_pillow() -> Iterator[None]:
    """Make truncated data an error whatever the process-wide setting says (another library may
    have turned it lenient: a truncated file would then load silently with grey filler). Pillow's
    own bomb warning is silenced: `_decode` applies this module's limits itself."""
    truncated = ImageFile.LOAD_TRUNCATED_IMAGES
    ImageFile.LOAD_TRUNCATED_IMAGES = False
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            yield
    finally:
        ImageFile.LOAD_TRUNCATED_IMAGES = truncated


def _decode(f, path) -> Image.Image:
    with _strict_pillow():
        try:
            # verify() checks what decoding skips (PNG chunk CRCs); it leaves the image unusable.
            Image.open(f).verify()
            f.seek(0)
            img = Image.open(f)
            _bound_decoded_size(img, path)
            img.load()
            return ImageOps.exif_transpose(img)
        except ImageLoadError:
            raise
        except Image.DecompressionBombError as e:
            raise ImageLoadError(path, f"decompression bomb: {e}") from e
        except UnidentifiedImageError as e:
            raise ImageLoadError(path, "not an image (unknown format or corrupt header)") from e
        except Exception as e:  # Pillow's decoders raise many exception types for bad data
            raise ImageLoadError(path, f"truncated or corrupt image data ({e})") from e


def _bound_decoded_size(img: Image.Image, path) -> None:
    """Keep the decoded image within MAX_DECODED_PIXELS: a larger JPEG is set to decode at the
    smallest DCT scale (1/2, 1/4, 1/8) that fits; anything else that large is refused."""
    width, height = img.size
    pixels = width * height
    if pixels > MAX_DECLARED_PIXELS:
        raise ImageLoadError(path, f"decompression bomb: {width}x{height} = {pixels:,} pixels, over the "
                                   f"limit of {MAX_DECLARED_PIXELS:,}")
    if pixels <= MAX_DECODED_PIXELS:
        return
    if isinstance(img, JpegImagePlugin.JpegImageFile):  # JPEG and MPO (many phones' JPEGs)
        scale = next(s for s in (2, 4, 8) if pixels / (s * s) <= MAX_DECODED_PIXELS)
        img.draft(None, (-(-width // scale), -(-height // scale)))
        return
    raise ImageLoadError(path, f"too large to decode: {width}x{height} = {pixels:,} pixels, over the limit of "
                               f"{MAX_DECODED_PIXELS:,} (only JPEG is decoded at reduced scale)")


def _to_rgb(img: Image.Image) -> Image.Image:
    if img.mode in _SIXTEEN_BIT_MODES:
        # Scale 0..65535 onto 0..255; Pillow's own convert() would clip everything above 255.
        return _gray_to_rgb(np.asarray(img, dtype=np.float64) / 257.0)
    if img.mode == "F":
        # Float images follow the numpy/scikit-image convention of [0, 1].
        return _gray_to_rgb(np.nan_to_num(np.asarray(img, dtype=np.float64)) * 255.0)
    if img.mode in _ALPHA_MODES or "transparency" in img.info:
        # Transparent pixels hold arbitrary (often black) colour; white is the background a viewer
        # shows and what the photo was most likely meant to be seen on.
        white = Image.new("RGBA", img.size, (255, 255, 255, 255))
        return Image.alpha_composite(white, img.convert("RGBA")).convert("RGB")
    return img.convert("RGB")


def _gray_to_rgb(values: np.ndarray) -> Image.Image:
    gray = np.clip(np.rint(values), 0, 255).astype(np.uint8)
    return Image.fromarray(gray, mode="L").convert("RGB")


def to_tensor(img: Image.Image) -> torch.Tensor:
    """8-bit RGB PIL image -> float32 tensor (3, H, W) in [0, 1]."""
    if img.mode != "RGB":
        raise ValueError(f"expected an RGB image, got mode {img.mode}")
    array = np.asarray(img, dtype=np.uint8)
    return torch.from_numpy(array.copy()).permute(2, 0, 1).float().div_(255.0)


def to_pil(tensor: torch.Tensor) -> Image.Image:
    """Float tensor (3, H, W) in [0, 1] -> 8-bit RGB PIL image (rounded, clamped)."""
    if tensor.ndim != 3 or tensor.shape[0] != 3:
        raise ValueError(f"expected a (3, H, W) tensor, got shape {tuple(tensor.shape)}")
    array = tensor.detach().cpu().float().mul(255.0).round().clamp(0, 255).to(torch.uint8)
    return Image.fromarray(array.permute(1, 2, 0).numpy(), mode="RGB")


def to_batch(imgs: Iterable[Image.Image]) -> torch.Tensor:
    """Same-size RGB images -> float32 tensor (N, 3, H, W) in [0, 1]."""
    tensors = [to_tensor(img) for img in imgs]
    if not tensors:
        raise ValueError("no images to batch")
    sizes = {tuple(t.shape) for t in tensors}
    if len(sizes) > 1:
        raise ValueError(f"images differ in size: {sorted(sizes)}")
    return torch.stack(tensors)


def resize_center_crop(img: Image.Image, resize: int = 256, crop: int = 224, name: str | None = None) -> Image.Image:
    """ImageNet(-C) preprocessing: shorter side to `resize` (bilinear), then a central crop x crop.

    Same as torchvision's Resize(resize) then CenterCrop(crop) on a PIL image.
    """
    if not (isinstance(resize, int) and isinstance(crop, int) and 0 < crop <= resize):
        raise ConfigError(f"need integers 0 < crop <= resize, got resize={resize!r}, crop={crop!r}")
    import torchvision.transforms.functional as TF  # imported when used: it costs a stage ~1 s

    return TF.center_crop(resize_shorter_side(img, resize, name), crop)


def resize_shorter_side(img: Image.Image, size: int, name: str | None = None) -> Image.Image:
    """torchvision's Resize(size): the shorter side to `size`, bilinear, aspect ratio kept. An
    image of more than MAX_ASPECT_RATIO, or that would exceed MAX_DECODED_PIXELS once resized,
    is refused (ImageLoadError) before any memory is spent on it."""
    width, height = img.size
    short, long = sorted((width, height))
    if long > MAX_ASPECT_RATIO * short:
        raise ImageLoadError(name or "image", f"aspect ratio {width}x{height} is beyond {MAX_ASPECT_RATIO}:1")
    resized_long = int(size * long / short)
    if size * resized_long > MAX_DECODED_PIXELS:
        raise ImageLoadError(name or "image", f"resizing {width}x{height} to {size} on its shorter side would make "
                                              f"{size * resized_long:,} pixels, over the limit of {MAX_DECODED_PIXELS:,}")
    import torchvision.transforms.functional as TF

    return TF.resize(img, size)


def center_crop(img: Image.Image, size: int, name: str | None = None) -> Image.Image:
    """The central size x size crop, moved onto the 16-pixel grid so a decoded JPEG keeps its blocks."""
    if not (isinstance(size, int) and size > 0):
        raise ConfigError(f"crop size must be a positive integer, got {size!r}")
    width, height = img.size
    if width < size or height < size:
        raise ImageLoadError(name or "image", f"too small for a {size}x{size} crop ({width}x{height})")
    top = GRID * ((height - size) // 2 // GRID)
    left = GRID * ((width - size) // 2 // GRID)
    return img.crop((left, top, left + size, top + size))


def classifier_input(
    img: Image.Image, resize: int | None = 256, crop: int = 224, name: str | None = None
) -> Image.Image:
    """The crop a classifier sees: ImageNet's Resize + CenterCrop, or with `resize` None/0 a crop on
    the 16-pixel grid without resampling (keeps a decoded JPEG's blocks where AFD expects them)."""
    if resize:
        return resize_center_crop(img, resize, crop, name)
    return center_crop(img, crop, name)


def random_crop(
    img: Image.Image, size: int, rng: np.random.Generator, name: str | None = None
) -> Image.Image:
    """A random size x size crop whose top-left corner lies on the 16-pixel grid.

    A crop of a JPEG-decoded image so keeps the encoder's 8x8 (and 4:2:0 16x16) block grid.
    `name` (e.g. the file path) is used in the error for an image that is too small.
    """
    left, top = random_crop_position(img, size, rng, name)
    return img.crop((left, top, left + size, top + size))


def random_crop_position(
    img: Image.Image, size: int, rng: np.random.Generator, name: str | None = None
) -> tuple[int, int]:
    """(left, top) of the crop random_crop takes with the same `rng` state."""
    if not (isinstance(size, int) and size > 0):
        raise ConfigError(f"crop size must be a positive integer, got {size!r}")
    width, height = img.size
    if width < size or height < size:
        raise ImageLoadError(
            name or "image", f"too small for a {size}x{size} crop ({width}x{height})"
        )
    top = GRID * int(rng.integers(0, (height - size) // GRID + 1))
    left = GRID * int(rng.integers(0, (width - size) // GRID + 1))
    return left, top
