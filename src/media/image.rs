//! Images users send, made ready for the model: decoded (PNG, JPEG, GIF's first frame, WebP),
//! scaled down to the providers' limits and re-encoded when they are over them. An image that
//! already fits is passed on as it came (after checking that it decodes).
//!
//! JPEGs, most of what users send, go through libjpeg-turbo (the `mozjpeg` crate): a photo
//! larger than the limits is decoded straight at the smallest scale of N/8 that is still at
//! least the size it is fitted to (libjpeg's DCT scaling), so a 12-megapixel photo costs about
//! a seventh of its pixels to decode. Scaling is `fast_image_resize` (SIMD convolution), the
//! re-encoding libjpeg-turbo's fastest settings.

pub mod jpeg;

use std::io::Cursor;

use bytes::Bytes;
use fast_image_resize as fir;
use image::codecs::png::{CompressionType, FilterType as PngFilter, PngEncoder};
use image::{DynamicImage, ImageEncoder, ImageFormat, ImageReader};

use super::kind::image_mime;

/// What an image sent to the model must fit.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ImageLimits {
    /// Longest side in pixels (Anthropic scales anything longer than 1568 px down itself).
    pub max_side: u32,
    /// Pixels in all (about 1.15 megapixels is what Anthropic reads without scaling).
    pub max_pixels: u64,
    /// Encoded bytes (5 MB per image on Anthropic, counted before base64: keep well under).
    pub max_bytes: usize,
}

impl Default for ImageLimits {
    fn default() -> Self {
        Self {
            max_side: 1568,
            max_pixels: 1_150_000,
            max_bytes: 3_750_000,
        }
    }
}

/// The largest image decoded at all (a decompression bomb guard): sides and allocation.
const MAX_DECODE_SIDE: u32 = 16_384;
const MAX_DECODE_ALLOC: u64 = 512 * 1024 * 1024;

/// An image ready for the model.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ModelImage {
    pub bytes: Bytes,
    pub mime: &'static str,
    pub width: u32,
    pub height: u32,
    /// The size it arrived in.
    pub original: (u32, u32),
}

/// Why an image cannot be shown to the model.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ImageError {
    #[error("it is not a PNG, JPEG, GIF or WebP image")]
    Unsupported,
    #[error("it could not be decoded ({0})")]
    Unreadable(String),
    #[error("it is too large to decode ({width}×{height} pixels)")]
    TooLarge { width: u32, height: u32 },
    #[error("it could not be encoded ({0})")]
    Encode(String),
}

/// Make an image ready for the model. CPU-bound: call it through [`super::background`].
pub fn prepare(bytes: &[u8], limits: ImageLimits) -> Result<ModelImage, ImageError> {
    let mime = image_mime(bytes).ok_or(ImageError::Unsupported)?;
    let (img, original) = decode_within(bytes, mime, Some(limits))?;
    fit(bytes, mime, img, original, limits)
}

/// Decode a PNG, JPEG, GIF (its first frame) or WebP image whole. CPU-bound.
pub fn decode(bytes: &[u8]) -> Result<DynamicImage, ImageError> {
    let mime = image_mime(bytes).ok_or(ImageError::Unsupported)?;
    Ok(decode_within(bytes, mime, None)?.0)
}

/// Decode an image of the given type, a JPEG at the smallest scale that still covers the size
/// it is fitted to within `fit_to` (see [`jpeg::decode`]); with the size it is stored in.
fn decode_within(
    bytes: &[u8],
    mime: &str,
    fit_to: Option<ImageLimits>,
) -> Result<Decoded, ImageError> {
    let format = match mime {
        "image/jpeg" => return jpeg::decode(bytes, fit_to),
        "image/png" => ImageFormat::Png,
        "image/gif" => ImageFormat::Gif,
        _ => ImageFormat::WebP,
    };
    let mut reader = ImageReader::with_format(Cursor::new(bytes), format);
    let mut decode_limits = image::Limits::default();
    decode_limits.max_image_width = Some(MAX_DECODE_SIDE);
    decode_limits.max_image_height = Some(MAX_DECODE_SIDE);
    decode_limits.max_alloc = Some(MAX_DECODE_ALLOC);
    reader.limits(decode_limits);
    let img = reader.decode().map_err(|e| match e {
        image::ImageError::Limits(_) => {
            let (width, height) = ImageReader::with_format(Cursor::new(bytes), format)
                .into_dimensions()
                .unwrap_or((0, 0));
            ImageError::TooLarge { width, height }
        }
        other => ImageError::Unreadable(other.to_string()),
    })?;
    let original = (img.width(), img.height());
    Ok((img, original))
}

/// A decoded image and the size it was stored in (larger when decoded at a smaller scale).
pub type Decoded = (DynamicImage, (u32, u32));

/// Pass `bytes` on when the image already fits, else scale `img` (decoded, maybe already
/// smaller than `original`) to the fitted size and encode it.
fn fit(
    bytes: &[u8],
    mime: &'static str,
    img: DynamicImage,
    original: (u32, u32),
    limits: ImageLimits,
) -> Result<ModelImage, ImageError> {
    let (width, height) = fitted_size(original.0, original.1, limits);
    // A GIF is always re-encoded: the model gets its first frame, as a PNG.
    if (width, height) == original && bytes.len() <= limits.max_bytes && mime != "image/gif" {
        return Ok(ModelImage {
            bytes: Bytes::copy_from_slice(bytes),
            mime,
            width,
            height,
            original,
        });
    }
    let scaled = scale(img, width, height)?;
    let (bytes, mime) = encode(&scaled, limits.max_bytes)?;
    Ok(ModelImage {
        bytes: Bytes::from(bytes),
        mime,
        width: scaled.width(),
        height: scaled.height(),
        original,
    })
}

/// `img` scaled to `width`×`height`, as 8-bit grey, RGB or RGBA (what is encoded after). The
/// scaling itself runs on RGBA, the one pixel layout `fast_image_resize` is built for here
/// (its `only_u8x4` feature: SIMD code for one layout instead of fourteen, 3 MB less binary);
/// grey and RGB images go back to their own layout after.
pub fn scale(img: DynamicImage, width: u32, height: u32) -> Result<DynamicImage, ImageError> {
    if (width, height) == (img.width(), img.height()) {
        return Ok(img);
    }
    let alpha = img.color().has_alpha();
    let grey = !img.color().has_color();
    let rgba = img.into_rgba8();
    let (src_w, src_h) = rgba.dimensions();
    let err = |e: &dyn std::fmt::Display| ImageError::Unreadable(format!("scaling failed: {e}"));
    let src = fir::images::Image::from_vec_u8(src_w, src_h, rgba.into_raw(), fir::PixelType::U8x4)
        .map_err(|e| err(&e))?;
    let mut dst = fir::images::Image::new(width, height, fir::PixelType::U8x4);
    // Lanczos3 keeps the text of a screenshot sharp; alpha is premultiplied while scaling (an
    // opaque image skips that step).
    let options = fir::ResizeOptions::new()
        .resize_alg(fir::ResizeAlg::Convolution(fir::FilterType::Lanczos3))
        .use_alpha(alpha);
    fir::Resizer::new()
        .resize(&src, &mut dst, &options)
        .map_err(|e| err(&e))?;
    let scaled = image::RgbaImage::from_raw(width, height, dst.into_vec())
        .map(DynamicImage::from)
        .ok_or_else(|| err(&"the scaled image has the wrong size"))?;
    Ok(match (alpha, grey) {
        (true, false) => scaled,
        (true, true) => DynamicImage::from(scaled.to_luma_alpha8()),
        (false, false) => DynamicImage::from(scaled.to_rgb8()),
        (false, true) => DynamicImage::from(scaled.to_luma8()),
    })
}

/// The size an image of `w`×`h` is scaled to: within the side and pixel limits, aspect kept.
pub fn fitted_size(w: u32, h: u32, limits: ImageLimits) -> (u32, u32) {
    let (w, h) = (w.max(1), h.max(1));
    let by_side = f64::from(limits.max_side) / f64::from(w.max(h));
    let by_pixels = (limits.max_pixels as f64 / (f64::from(w) * f64::from(h))).sqrt();
    if by_side.min(by_pixels) >= 1.0 {
        return (w, h);
    }
    if by_side <= by_pixels {
        // In integers, so the long side is exactly the limit (floats land a pixel short).
        let long = w.max(h);
        let short = |side: u32| {
            u32::try_from(u64::from(side) * u64::from(limits.max_side) / u64::from(long))
                .unwrap_or(1)
                .max(1)
        };
        return if w >= h {
            (limits.max_side, short(h))
        } else {
            (short(w), limits.max_side)
        };
    }
    let nw = ((f64::from(w) * by_pixels).floor() as u32).max(1);
    let nh = ((f64::from(h) * by_pixels).floor() as u32).max(1);
    (nw, nh)
}

/// PNG when the image has transparency and the PNG fits; JPEG otherwise (quality falling until
/// it fits).
fn encode(img: &DynamicImage, max_bytes: usize) -> Result<(Vec<u8>, &'static str), ImageError> {
    if img.color().has_alpha() {
        let rgba = img.to_rgba8();
        let mut out = Vec::new();
        PngEncoder::new_with_quality(&mut out, CompressionType::Fast, PngFilter::Adaptive)
            .write_image(
                rgba.as_raw(),
                rgba.width(),
                rgba.height(),
                image::ExtendedColorType::Rgba8,
            )
            .map_err(|e| ImageError::Encode(e.to_string()))?;
        if out.len() <= max_bytes {
            return Ok((out, "image/png"));
        }
    }
    // Flattened once, not once per quality.
    let flat = jpeg::flattened(img);
    for quality in [85u8, 70, 55, 40] {
        let out = jpeg::encode(&flat, quality)?;
        if out.len() <= max_bytes {
            return Ok((out, "image/jpeg"));
        }
    }
    Err(ImageError::Encode(format!(
        "it does not fit in {max_bytes} bytes even as a low-quality JPEG"
    )))
}

#[cfg(test)]
mod tests {
    use super::*;
    use image::{Rgb, RgbImage, Rgba, RgbaImage};

    /// `img` in `format`; JPEGs through the binary's one JPEG codec.
    fn encoded(img: DynamicImage, format: ImageFormat) -> Vec<u8> {
        if format == ImageFormat::Jpeg {
            return jpeg::encode(&img, 75).unwrap();
        }
        let mut out = Cursor::new(Vec::new());
        img.write_to(&mut out, format).unwrap();
        out.into_inner()
    }

    #[test]
    fn small_images_pass_as_they_are() {
        let png = encoded(
            DynamicImage::ImageRgb8(RgbImage::from_pixel(40, 30, Rgb([1, 2, 3]))),
            ImageFormat::Png,
        );
        let m = prepare(&png, ImageLimits::default()).unwrap();
        assert_eq!((m.width, m.height, m.mime), (40, 30, "image/png"));
        assert_eq!(m.bytes.as_ref(), png.as_slice());
    }

    #[test]
    fn large_photos_are_scaled_within_every_limit() {
        let jpeg = encoded(
            DynamicImage::ImageRgb8(RgbImage::from_fn(4000, 3000, |x, y| {
                Rgb([(x % 256) as u8, (y % 256) as u8, 90])
            })),
            ImageFormat::Jpeg,
        );
        let limits = ImageLimits::default();
        let m = prepare(&jpeg, limits).unwrap();
        assert_eq!(m.original, (4000, 3000));
        assert!(m.width.max(m.height) <= limits.max_side);
        assert!(u64::from(m.width) * u64::from(m.height) <= limits.max_pixels);
        assert!(m.bytes.len() <= limits.max_bytes);
        assert_eq!(m.mime, "image/jpeg");
        let back = decode(&m.bytes).unwrap();
        assert_eq!((back.width(), back.height()), (m.width, m.height));
        // The aspect ratio is kept.
        let ratio = f64::from(m.width) / f64::from(m.height);
        assert!((ratio - 4.0 / 3.0).abs() < 0.01, "{ratio}");
    }

    #[test]
    fn scaling_keeps_each_layout_and_its_content() {
        let (w, h) = (800, 600);
        let grey = DynamicImage::ImageLuma8(image::GrayImage::from_fn(w, h, |x, _| {
            image::Luma([(x / 4) as u8])
        }));
        let rgb = DynamicImage::ImageRgb8(RgbImage::from_fn(w, h, |x, y| {
            Rgb([(x / 4) as u8, (y / 3) as u8, 200])
        }));
        // Left half transparent, right half opaque red.
        let rgba = DynamicImage::ImageRgba8(RgbaImage::from_fn(w, h, |x, _| {
            if x < w / 2 {
                Rgba([0, 0, 0, 0])
            } else {
                Rgba([255, 0, 0, 255])
            }
        }));
        for (img, color) in [
            (grey, image::ColorType::L8),
            (rgb, image::ColorType::Rgb8),
            (rgba, image::ColorType::Rgba8),
        ] {
            let scaled = scale(img.clone(), w / 2, h / 2).unwrap();
            assert_eq!(scaled.color(), color);
            assert_eq!((scaled.width(), scaled.height()), (w / 2, h / 2));
            let halved = img.resize_exact(w / 2, h / 2, image::imageops::FilterType::Triangle);
            let off = difference(&scaled, &halved);
            assert!(off < 2.0, "{color:?}: {off}");
        }
    }

    /// The mean absolute difference of two images of one size, per channel value.
    fn difference(a: &DynamicImage, b: &DynamicImage) -> f64 {
        let (a, b) = (a.to_rgb8(), b.to_rgb8());
        assert_eq!(a.dimensions(), b.dimensions());
        let sum: u64 = a
            .as_raw()
            .iter()
            .zip(b.as_raw())
            .map(|(x, y)| u64::from(x.abs_diff(*y)))
            .sum();
        sum as f64 / a.as_raw().len() as f64
    }

    #[test]
    fn photos_decoded_at_a_smaller_scale_look_like_the_full_decode_scaled() {
        // Smooth colour gradients, so the two scalings can only differ by rounding.
        let photo = DynamicImage::ImageRgb8(RgbImage::from_fn(3200, 2400, |x, y| {
            Rgb([(x / 13) as u8, (y / 10) as u8, ((x + y) / 22) as u8])
        }));
        let jpeg = encoded(photo, ImageFormat::Jpeg);
        let limits = ImageLimits::default();
        let (scaled, original) = jpeg::decode(&jpeg, Some(limits)).unwrap();
        assert_eq!(original, (3200, 2400));
        assert_eq!(
            (scaled.width(), scaled.height()),
            (1600, 1200),
            "half size is the smallest scale still above the 1238×928 it is fitted to"
        );
        let m = prepare(&jpeg, limits).unwrap();
        let ours = decode(&m.bytes).unwrap();
        let full = decode(&jpeg).unwrap().thumbnail_exact(m.width, m.height);
        let diff = difference(&ours, &full);
        assert!(diff < 4.0, "mean difference {diff}");

        let gray = encoded(
            DynamicImage::ImageLuma8(image::GrayImage::from_fn(2400, 2400, |x, _| {
                image::Luma([(x / 10) as u8])
            })),
            ImageFormat::Jpeg,
        );
        let m = prepare(&gray, limits).unwrap();
        assert_eq!(m.original, (2400, 2400));
        assert_eq!((m.width, m.height), (1072, 1072));
        let back = decode(&m.bytes).unwrap();
        let full = decode(&gray).unwrap().thumbnail_exact(1072, 1072);
        assert!(difference(&back, &full) < 4.0);
    }

    #[test]
    fn gifs_become_their_first_frame_and_transparency_stays_png() {
        let gif = encoded(
            DynamicImage::ImageRgba8(RgbaImage::from_pixel(10, 10, Rgba([9, 9, 9, 255]))),
            ImageFormat::Gif,
        );
        let m = prepare(&gif, ImageLimits::default()).unwrap();
        assert_eq!((m.width, m.height), (10, 10));
        assert_ne!(m.mime, "image/gif");
        let webp = encoded(
            DynamicImage::ImageRgba8(RgbaImage::from_pixel(3000, 100, Rgba([9, 9, 9, 10]))),
            ImageFormat::WebP,
        );
        let m = prepare(&webp, ImageLimits::default()).unwrap();
        assert_eq!(m.mime, "image/png");
        assert_eq!(m.width, 1568);
    }

    #[test]
    fn broken_images_are_clear_errors() {
        let mut png = encoded(
            DynamicImage::ImageRgb8(RgbImage::from_pixel(64, 64, Rgb([1, 2, 3]))),
            ImageFormat::Png,
        );
        png.truncate(60);
        assert!(matches!(
            prepare(&png, ImageLimits::default()),
            Err(ImageError::Unreadable(_))
        ));
        assert_eq!(
            prepare(b"not an image", ImageLimits::default()),
            Err(ImageError::Unsupported)
        );
        // A photo cut off after its header, large enough for the scaled decode.
        let mut jpeg = encoded(
            DynamicImage::ImageRgb8(RgbImage::from_fn(2000, 2000, |x, y| {
                Rgb([(x % 251) as u8, (y % 241) as u8, 7])
            })),
            ImageFormat::Jpeg,
        );
        jpeg.truncate(400);
        assert!(matches!(
            prepare(&jpeg, ImageLimits::default()),
            Err(ImageError::Unreadable(_))
        ));
    }

    #[test]
    fn sizes_fit_side_and_pixels() {
        let l = ImageLimits::default();
        assert_eq!(fitted_size(100, 100, l), (100, 100));
        let (w, h) = fitted_size(3000, 1000, l);
        assert!(w <= 1568 && u64::from(w) * u64::from(h) <= l.max_pixels);
        assert_eq!(fitted_size(0, 0, l), (1, 1));
    }
}
