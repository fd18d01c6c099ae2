//! JPEG in and out through libjpeg-turbo (the `mozjpeg` crate): the one JPEG codec of the
//! binary, for the photos users send and for the screenshots we post.
//!
//! libjpeg reports errors by unwinding (the `mozjpeg` crate's design), so every call is inside
//! `catch_unwind`, and the unwind carries libjpeg's own message; its warnings about corrupt
//! data are made errors too, so a damaged photo is never passed on half grey.

use std::borrow::Cow;
use std::os::raw::c_int;
use std::panic::{AssertUnwindSafe, catch_unwind};

use image::{DynamicImage, GrayImage, RgbImage};
use mozjpeg::decompress::DecompressStarted;
use mozjpeg::{ColorSpace, Compress, Decompress, Format};
use mozjpeg_sys::{jpeg_common_struct, jpeg_error_mgr, jpeg_std_error};

use super::{Decoded, ImageError, ImageLimits, MAX_DECODE_ALLOC, MAX_DECODE_SIDE, fitted_size};

/// A JPEG decoded whole (`fit_to` `None`), or at the smallest scale N/8 (N in 1..=8) whose size
/// is not below the size it is fitted to within `fit_to` (libjpeg's DCT scaling: a 12-megapixel
/// photo fitted to 1.2 megapixels costs about a seventh of its pixels to decode); with the size
/// it is stored in. Grey stays grey; colour (YCbCr, RGB, CMYK, YCCK) comes out as RGB.
pub fn decode(bytes: &[u8], fit_to: Option<ImageLimits>) -> Result<Decoded, ImageError> {
    match catch_unwind(AssertUnwindSafe(|| decode_unguarded(bytes, fit_to))) {
        Ok(decoded) => decoded,
        Err(unwound) => Err(ImageError::Unreadable(reason(&*unwound))),
    }
}

fn decode_unguarded(bytes: &[u8], fit_to: Option<ImageLimits>) -> Result<Decoded, ImageError> {
    let unreadable = |e: std::io::Error| ImageError::Unreadable(e.to_string());
    let mut decoder = Decompress::with_err(strict_errors())
        .from_mem(bytes)
        .map_err(unreadable)?;
    let (width, height) = decoder.size();
    let original = (
        u32::try_from(width).unwrap_or(u32::MAX),
        u32::try_from(height).unwrap_or(u32::MAX),
    );
    // A progressive JPEG keeps every coefficient (2 bytes each, per component) in memory.
    let coefficients = (width as u64) * (height as u64) * 2 * 3;
    if original.0 > MAX_DECODE_SIDE
        || original.1 > MAX_DECODE_SIDE
        || coefficients > MAX_DECODE_ALLOC
    {
        return Err(ImageError::TooLarge {
            width: original.0,
            height: original.1,
        });
    }
    decoder.scale(fit_to.map_or(8, |limits| {
        eighths(original, fitted_size(original.0, original.1, limits))
    }));
    let short = || ImageError::Unreadable("the image data ends early".into());
    let img = match decoder.image().map_err(unreadable)? {
        Format::RGB(started) => {
            let (w, h, px) = read_all(started).ok_or_else(short)?;
            RgbImage::from_raw(w, h, px).map(DynamicImage::from)
        }
        Format::Gray(started) => {
            let (w, h, px) = read_all(started).ok_or_else(short)?;
            GrayImage::from_raw(w, h, px).map(DynamicImage::from)
        }
        Format::CMYK(started) => {
            let (w, h, px) = read_all(started).ok_or_else(short)?;
            RgbImage::from_raw(w, h, cmyk_to_rgb(&px)).map(DynamicImage::from)
        }
    };
    let img = img.ok_or_else(short)?;
    Ok((img, original))
}

/// Every pixel of a started decode, with its size; `None` when libjpeg stopped short.
fn read_all(mut started: DecompressStarted<&[u8]>) -> Option<(u32, u32, Vec<u8>)> {
    let size = (
        u32::try_from(started.width()).ok()?,
        u32::try_from(started.height()).ok()?,
    );
    let pixels = started.read_scanlines::<u8>().ok()?;
    started.finish().ok()?;
    Some((size.0, size.1, pixels))
}

/// CMYK as Adobe applications store it in JPEGs (every value inverted: 255 is no ink, which is
/// what libjpeg writes too) to RGB, the naive way every viewer without colour profiles uses.
fn cmyk_to_rgb(cmyk: &[u8]) -> Vec<u8> {
    let mut rgb = Vec::with_capacity(cmyk.len() / 4 * 3);
    for px in cmyk.chunks_exact(4) {
        let k = u16::from(px[3]);
        for &ink in &px[..3] {
            // At most 255 * 255 / 255.
            rgb.push(((u16::from(ink) * k + 127) / 255) as u8);
        }
    }
    rgb
}

/// The smallest N (1..=8) for which libjpeg's output at N/8 (each side rounded up) is at
/// least `target` on both sides.
pub fn eighths(original: (u32, u32), target: (u32, u32)) -> u8 {
    let side = |full: u32, n: u32| (u64::from(full) * u64::from(n)).div_ceil(8);
    (1..=8u8)
        .find(|&n| {
            side(original.0, u32::from(n)) >= u64::from(target.0)
                && side(original.1, u32::from(n)) >= u64::from(target.1)
        })
        .unwrap_or(8)
}

/// `img` in a layout JPEG stores: 8-bit grey or RGB as it is, anything else converted (alpha
/// dropped). Callers that encode one image several times flatten it once.
pub fn flattened(img: &DynamicImage) -> Cow<'_, DynamicImage> {
    match img {
        DynamicImage::ImageLuma8(_) | DynamicImage::ImageRgb8(_) => Cow::Borrowed(img),
        other if other.color().has_color() => Cow::Owned(DynamicImage::from(other.to_rgb8())),
        other => Cow::Owned(DynamicImage::from(other.to_luma8())),
    }
}

/// An image as a baseline JPEG with libjpeg-turbo's fastest settings (see [`flattened`]).
pub fn encode(img: &DynamicImage, quality: u8) -> Result<Vec<u8>, ImageError> {
    let flat = flattened(img);
    let (space, pixels, width, height) = match flat.as_ref() {
        DynamicImage::ImageLuma8(g) => {
            (ColorSpace::JCS_GRAYSCALE, g.as_raw(), g.width(), g.height())
        }
        DynamicImage::ImageRgb8(rgb) => {
            (ColorSpace::JCS_RGB, rgb.as_raw(), rgb.width(), rgb.height())
        }
        _ => {
            return Err(ImageError::Encode(
                "not grey or RGB after flattening".into(),
            ));
        }
    };
    let run = || -> std::io::Result<Vec<u8>> {
        let mut compress = Compress::new(space);
        compress.set_fastest_defaults();
        compress.set_quality(f32::from(quality));
        compress.set_size(width as usize, height as usize);
        let mut started = compress.start_compress(Vec::new())?;
        started.write_scanlines(pixels)?;
        started.finish()
    };
    match catch_unwind(AssertUnwindSafe(run)) {
        Ok(Ok(out)) => Ok(out),
        Ok(Err(e)) => Err(ImageError::Encode(e.to_string())),
        Err(unwound) => Err(ImageError::Encode(reason(&*unwound))),
    }
}

/// The message an unwind out of libjpeg carries.
fn reason(unwound: &(dyn std::any::Any + Send)) -> String {
    unwound
        .downcast_ref::<String>()
        .cloned()
        .or_else(|| unwound.downcast_ref::<&str>().map(|s| (*s).to_string()))
        .unwrap_or_else(|| "libjpeg stopped".into())
}

/// libjpeg's standard error handling, with errors and corrupt-data warnings unwinding.
fn strict_errors() -> jpeg_error_mgr {
    // SAFETY: `jpeg_error_mgr` is a plain C struct (integers, pointers and optional function
    // pointers), for which all zeroes is a valid value; `jpeg_std_error` then fills in
    // libjpeg's defaults.
    let mut errors: jpeg_error_mgr = unsafe { std::mem::zeroed() };
    // SAFETY: the pointer is to a live, exclusively borrowed struct.
    unsafe { jpeg_std_error(&mut errors) };
    errors.error_exit = Some(fail);
    errors.emit_message = Some(fail_on_warning);
    errors
}

/// libjpeg's fatal error: unwind to the `catch_unwind` around the call (libjpeg is built to be
/// unwound through: mozjpeg-sys's `unwinding` feature), with libjpeg's message.
extern "C-unwind" fn fail(cinfo: &mut jpeg_common_struct) {
    std::panic::resume_unwind(Box::new(message(cinfo)));
}

/// Level -1 is a warning, which libjpeg gives for corrupt or truncated data; others are trace
/// messages.
extern "C-unwind" fn fail_on_warning(cinfo: &mut jpeg_common_struct, level: c_int) {
    if level < 0 {
        std::panic::resume_unwind(Box::new(message(cinfo)));
    }
}

/// libjpeg's text for its last error or warning (e.g. "Premature end of JPEG file").
fn message(cinfo: &mut jpeg_common_struct) -> String {
    /// `JMSG_LENGTH_MAX` in jerror.h: what `format_message` may write, with its NUL.
    const JMSG_LENGTH_MAX: usize = 200;
    // SAFETY: `err` is the error manager this decode or encode was set up with (it outlives
    // the call that failed).
    let Some(format) = (unsafe { cinfo.err.as_ref() }).and_then(|err| err.format_message) else {
        return "libjpeg stopped".into();
    };
    let mut buffer = [0u8; JMSG_LENGTH_MAX];
    // SAFETY: mozjpeg-sys declares the buffer as `&[u8; 80]`; libjpeg's `format_message`
    // writes a NUL-terminated string of at most JMSG_LENGTH_MAX bytes through that pointer.
    // The function is called with a pointer to a writable buffer of that length (a reference
    // and a pointer are passed alike).
    let format: unsafe extern "C-unwind" fn(&mut jpeg_common_struct, *mut u8) =
        unsafe { std::mem::transmute(format) };
    // SAFETY: see above; `cinfo` is the live struct libjpeg handed to the error handler.
    unsafe { format(cinfo, buffer.as_mut_ptr()) };
    let end = buffer.iter().position(|&b| b == 0).unwrap_or(buffer.len());
    String::from_utf8_lossy(&buffer[..end]).into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;
    use image::Rgb;

    fn photo(w: u32, h: u32) -> Vec<u8> {
        let img = RgbImage::from_fn(w, h, |x, y| Rgb([(x / 16) as u8, (y / 12) as u8, 40]));
        encode(&DynamicImage::from(img), 90).unwrap()
    }

    #[test]
    fn jpegs_are_decoded_at_the_smallest_eighth_that_still_covers_the_fitted_size() {
        // 4000×3000 fits into 1238×928: 3/8 gives 1500×1125.
        assert_eq!(eighths((4000, 3000), (1238, 928)), 3);
        // libjpeg rounds each side up: 1/8 of 801 is 101, which covers 101.
        assert_eq!(eighths((801, 801), (101, 101)), 1);
        assert_eq!(eighths((801, 801), (102, 101)), 2);
        // An image that already fits is decoded whole.
        assert_eq!(eighths((640, 480), (640, 480)), 8);
        let photo = photo(4000, 3000);
        let (decoded, original) = decode(&photo, Some(ImageLimits::default())).unwrap();
        assert_eq!(original, (4000, 3000));
        assert_eq!((decoded.width(), decoded.height()), (1500, 1125));
        let (whole, _) = decode(&photo, None).unwrap();
        assert_eq!((whole.width(), whole.height()), (4000, 3000));
        assert_eq!(whole.color(), image::ColorType::Rgb8);
    }

    #[test]
    fn grey_stays_grey_and_colours_survive_the_round_trip() {
        let grey = DynamicImage::from(GrayImage::from_fn(64, 48, |x, _| {
            image::Luma([(x * 4) as u8])
        }));
        let (back, _) = decode(&encode(&grey, 95).unwrap(), None).unwrap();
        assert_eq!(back.color(), image::ColorType::L8);
        let rgba = DynamicImage::from(image::RgbaImage::from_pixel(
            32,
            32,
            image::Rgba([200, 40, 10, 7]),
        ));
        let (back, _) = decode(&encode(&rgba, 95).unwrap(), None).unwrap();
        assert_close(&back, (16, 16), [200, 40, 10]);
    }

    /// The pixel at `at` is `rgb`, give or take JPEG's rounding.
    fn assert_close(img: &DynamicImage, at: (u32, u32), rgb: [u8; 3]) {
        let px = img.to_rgb8().get_pixel(at.0, at.1).0;
        assert!(
            px.iter().zip(rgb).all(|(a, b)| a.abs_diff(b) <= 3),
            "{px:?} is not {rgb:?}"
        );
    }

    #[test]
    fn cmyk_photos_come_out_as_rgb() {
        // Stored as Adobe applications store it: inverted, so (R, G, B, 255) is that colour.
        let mut compress = Compress::new(ColorSpace::JCS_CMYK);
        compress.set_quality(95.0);
        compress.set_size(16, 16);
        let mut started = compress.start_compress(Vec::new()).unwrap();
        let pixels: Vec<u8> = [200u8, 40, 10, 255].repeat(16 * 16);
        started.write_scanlines(&pixels).unwrap();
        let cmyk = started.finish().unwrap();
        let (img, original) = decode(&cmyk, None).unwrap();
        assert_eq!(original, (16, 16));
        assert_close(&img, (8, 8), [200, 40, 10]);
    }

    #[test]
    fn damaged_jpegs_are_errors_with_libjpegs_reason() {
        let mut cut = photo(2000, 2000);
        cut.truncate(400);
        let err = decode(&cut, Some(ImageLimits::default())).unwrap_err();
        assert!(
            matches!(&err, ImageError::Unreadable(why) if why.contains("Premature end")),
            "{err:?}"
        );
        let err = decode(b"\xff\xd8\xff\xe0 not really", None).unwrap_err();
        assert!(matches!(err, ImageError::Unreadable(_)), "{err:?}");
        // Not a JPEG at all.
        let err = decode(b"GIF89a", None).unwrap_err();
        assert!(
            matches!(&err, ImageError::Unreadable(why) if why.contains("Not a JPEG")),
            "{err:?}"
        );
    }
}
