//! Make a screenshot fit where it goes: downscale past a maximum side length, and re-encode
//! (PNG → lossless WebP → JPEG at falling quality, then smaller) until it is under a byte limit.

use std::io::Cursor;

use bytes::Bytes;
use image::codecs::png::{CompressionType, FilterType as PngFilter, PngEncoder};
use image::codecs::webp::WebPEncoder;
use image::{DynamicImage, ImageEncoder, ImageFormat};

use crate::media::image::{self as media_image, ImageError};

/// An image encoding we post.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Encoding {
    Png,
    Jpeg,
    Webp,
}

impl Encoding {
    pub fn mime(self) -> &'static str {
        match self {
            Self::Png => "image/png",
            Self::Jpeg => "image/jpeg",
            Self::Webp => "image/webp",
        }
    }

    pub fn extension(self) -> &'static str {
        match self {
            Self::Png => "png",
            Self::Jpeg => "jpg",
            Self::Webp => "webp",
        }
    }

    pub fn parse(text: &str) -> Option<Self> {
        match text.to_ascii_lowercase().as_str() {
            "png" => Some(Self::Png),
            "jpg" | "jpeg" => Some(Self::Jpeg),
            "webp" => Some(Self::Webp),
            _ => None,
        }
    }
}

/// The fitted image.
#[derive(Clone, Debug)]
pub struct Fitted {
    pub bytes: Bytes,
    pub encoding: Encoding,
    pub width: u32,
    pub height: u32,
    /// True when the pixels were scaled down.
    pub downscaled: bool,
}

/// Why an image could not be fitted.
#[derive(Debug, thiserror::Error)]
pub enum FitError {
    #[error("the screenshot is not a readable image: {0}")]
    Decode(String),
    #[error("the image could not be encoded: {0}")]
    Encode(String),
    #[error("the image does not fit in {limit} bytes even scaled down")]
    TooLarge { limit: usize },
}

/// What the image must fit.
#[derive(Clone, Copy, Debug)]
pub struct Limits {
    pub max_bytes: usize,
    /// Longest side in pixels.
    pub max_side: u32,
    /// The encoding asked for; `None` keeps PNG when it fits and converts when it does not.
    pub prefer: Option<Encoding>,
}

const JPEG_QUALITIES: [u8; 4] = [85, 70, 55, 40];

/// Fit a PNG (as Chromium captures it) into `limits`. CPU-bound: call it from
/// `spawn_blocking`.
pub fn fit(png: &[u8], limits: Limits) -> Result<Fitted, FitError> {
    let (width, height) = image::ImageReader::with_format(Cursor::new(png), ImageFormat::Png)
        .into_dimensions()
        .map_err(|e| FitError::Decode(e.to_string()))?;
    let as_is = matches!(limits.prefer, None | Some(Encoding::Png));
    if as_is && png.len() <= limits.max_bytes && width.max(height) <= limits.max_side {
        return Ok(Fitted {
            bytes: Bytes::copy_from_slice(png),
            encoding: Encoding::Png,
            width,
            height,
            downscaled: false,
        });
    }
    let mut img = image::load_from_memory_with_format(png, ImageFormat::Png)
        .map_err(|e| FitError::Decode(e.to_string()))?;
    let mut downscaled = false;
    if width.max(height) > limits.max_side {
        img = scale_to_side(img, limits.max_side)?;
        downscaled = true;
    }
    loop {
        for encoding in ladder(limits.prefer) {
            let qualities: &[u8] = if encoding == Encoding::Jpeg {
                &JPEG_QUALITIES
            } else {
                &[100]
            };
            for &quality in qualities {
                let bytes = encode(&img, encoding, quality)?;
                if bytes.len() <= limits.max_bytes {
                    return Ok(Fitted {
                        bytes: Bytes::from(bytes),
                        encoding,
                        width: img.width(),
                        height: img.height(),
                        downscaled,
                    });
                }
            }
        }
        let side = img.width().max(img.height());
        if side <= 64 {
            return Err(FitError::TooLarge {
                limit: limits.max_bytes,
            });
        }
        img = scale_to_side(img, side * 3 / 4)?;
        downscaled = true;
    }
}

/// The encodings to try, in order.
fn ladder(prefer: Option<Encoding>) -> Vec<Encoding> {
    match prefer {
        None => vec![Encoding::Png, Encoding::Webp, Encoding::Jpeg],
        Some(Encoding::Png) => vec![Encoding::Png, Encoding::Webp, Encoding::Jpeg],
        Some(Encoding::Webp) => vec![Encoding::Webp, Encoding::Jpeg],
        Some(Encoding::Jpeg) => vec![Encoding::Jpeg],
    }
}

/// Scale so that the longest side is `side` pixels, keeping the aspect ratio (the scaling
/// of the images users send: SIMD Lanczos3, which keeps a page's text sharp).
pub fn scale_to_side(img: DynamicImage, side: u32) -> Result<DynamicImage, FitError> {
    let (w, h) = (img.width().max(1), img.height().max(1));
    let longest = w.max(h);
    if longest <= side {
        return Ok(img);
    }
    let nw = ((w as u64 * side as u64) / longest as u64).max(1) as u32;
    let nh = ((h as u64 * side as u64) / longest as u64).max(1) as u32;
    media_image::scale(img, nw, nh).map_err(|e| FitError::Encode(e.to_string()))
}

/// Encode `img`; `quality` matters for JPEG only.
pub fn encode(img: &DynamicImage, encoding: Encoding, quality: u8) -> Result<Vec<u8>, FitError> {
    let mut out = Vec::new();
    let err = |e: image::ImageError| FitError::Encode(e.to_string());
    match encoding {
        Encoding::Png => {
            let rgba = img.to_rgba8();
            PngEncoder::new_with_quality(&mut out, CompressionType::Best, PngFilter::Adaptive)
                .write_image(
                    rgba.as_raw(),
                    rgba.width(),
                    rgba.height(),
                    image::ExtendedColorType::Rgba8,
                )
                .map_err(err)?;
        }
        Encoding::Webp => {
            let rgba = img.to_rgba8();
            WebPEncoder::new_lossless(&mut out)
                .write_image(
                    rgba.as_raw(),
                    rgba.width(),
                    rgba.height(),
                    image::ExtendedColorType::Rgba8,
                )
                .map_err(err)?;
        }
        Encoding::Jpeg => {
            out = media_image::jpeg::encode(img, quality).map_err(|e| match e {
                ImageError::Encode(why) => FitError::Encode(why),
                other => FitError::Encode(other.to_string()),
            })?;
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use image::{Rgba, RgbaImage};

    /// A noisy image: compresses badly, like a photo-heavy page.
    fn noisy(w: u32, h: u32) -> Vec<u8> {
        let mut seed = 12345u32;
        let img = RgbaImage::from_fn(w, h, |_, _| {
            seed = seed.wrapping_mul(1_103_515_245).wrapping_add(12345);
            let [a, b, c, _] = seed.to_le_bytes();
            Rgba([a, b, c, 255])
        });
        encode(&DynamicImage::ImageRgba8(img), Encoding::Png, 100).unwrap()
    }

    fn flat(w: u32, h: u32) -> Vec<u8> {
        let img = RgbaImage::from_pixel(w, h, Rgba([200, 30, 30, 255]));
        encode(&DynamicImage::ImageRgba8(img), Encoding::Png, 100).unwrap()
    }

    #[test]
    fn small_png_passes_untouched() {
        let png = flat(100, 50);
        let fitted = fit(
            &png,
            Limits {
                max_bytes: 1 << 20,
                max_side: 4000,
                prefer: None,
            },
        )
        .unwrap();
        assert_eq!(fitted.encoding, Encoding::Png);
        assert_eq!(fitted.bytes.as_ref(), png.as_slice());
        assert_eq!((fitted.width, fitted.height), (100, 50));
    }

    #[test]
    fn large_sides_are_downscaled() {
        let png = flat(3000, 1000);
        let fitted = fit(
            &png,
            Limits {
                max_bytes: 1 << 20,
                max_side: 1500,
                prefer: None,
            },
        )
        .unwrap();
        assert_eq!((fitted.width, fitted.height), (1500, 500));
        assert!(fitted.downscaled);
    }

    #[test]
    fn over_the_byte_limit_becomes_jpeg_or_smaller() {
        let png = noisy(400, 300);
        let limit = png.len() / 4;
        let fitted = fit(
            &png,
            Limits {
                max_bytes: limit,
                max_side: 4000,
                prefer: None,
            },
        )
        .unwrap();
        assert!(fitted.bytes.len() <= limit);
        assert_ne!(fitted.encoding, Encoding::Png);
        let decoded = media_image::decode(&fitted.bytes).unwrap();
        assert_eq!(
            (decoded.width(), decoded.height()),
            (fitted.width, fitted.height)
        );
    }

    #[test]
    fn asked_for_encodings_are_used() {
        let png = flat(64, 64);
        for encoding in [Encoding::Jpeg, Encoding::Webp] {
            let fitted = fit(
                &png,
                Limits {
                    max_bytes: 1 << 20,
                    max_side: 4000,
                    prefer: Some(encoding),
                },
            )
            .unwrap();
            assert_eq!(fitted.encoding, encoding);
            let format = image::guess_format(&fitted.bytes).unwrap();
            assert_eq!(format.to_mime_type(), encoding.mime());
        }
    }

    #[test]
    fn impossible_limits_say_so() {
        let png = noisy(200, 200);
        let e = fit(
            &png,
            Limits {
                max_bytes: 10,
                max_side: 4000,
                prefer: None,
            },
        )
        .unwrap_err();
        assert!(matches!(e, FitError::TooLarge { .. }));
        assert!(
            fit(
                b"not a png",
                Limits {
                    max_bytes: 10,
                    max_side: 10,
                    prefer: None
                }
            )
            .is_err()
        );
    }
}
