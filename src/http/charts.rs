//! The charts page: `/charts` and its assets under `/charts/assets/`, every byte embedded in the
//! binary (no CDN: the page works offline). The page is plain HTML, CSS and JavaScript of our
//! own (`assets/charts/`) plus uPlot, vendored from npm by `scripts/vendor-assets` with its
//! licence (`assets/vendor/uplot/`). It reads the API like any client, with the visitor's token.
//!
//! Caching: uPlot's path names its version, so a browser may keep it for a year; our own files
//! and the page keep their paths across releases, so they are revalidated every time
//! (`no-cache`) against an `ETag` of their content and answered `304` while unchanged.

use std::sync::{Arc, LazyLock};

use axum::Router;
use axum::http::HeaderMap;
use axum::response::Response;
use axum::routing::get;
use hyper::StatusCode;
use hyper::header::{self, HeaderValue};
use sha2::{Digest, Sha256};

use super::{HttpState, plain, read_only};

/// The vendored uPlot's version; its assets' paths carry it (the tests check they agree with
/// `assets/vendor/uplot/VERSION` and the page).
#[cfg(test)]
const UPLOT_VERSION: &str = "1.6.32";

/// One embedded file and how it is served.
struct Asset {
    path: &'static str,
    body: &'static [u8],
    content_type: &'static str,
    cache_control: &'static str,
}

const REVALIDATE: &str = "no-cache";
const IMMUTABLE: &str = "public, max-age=31536000, immutable";

/// An asset's entry in [`ASSETS`].
const fn asset(
    path: &'static str,
    body: &'static [u8],
    content_type: &'static str,
    cache_control: &'static str,
) -> Asset {
    Asset {
        path,
        body,
        content_type,
        cache_control,
    }
}

const HTML: &str = "text/html; charset=utf-8";
const JS: &str = "text/javascript; charset=utf-8";
const CSS: &str = "text/css; charset=utf-8";
const TEXT: &str = "text/plain; charset=utf-8";

static ASSETS: [Asset; 7] = [
    asset(
        "/charts",
        include_bytes!("../../assets/charts/index.html"),
        HTML,
        REVALIDATE,
    ),
    asset(
        "/charts/assets/charts.js",
        include_bytes!("../../assets/charts/charts.js"),
        JS,
        REVALIDATE,
    ),
    asset(
        "/charts/assets/charts.css",
        include_bytes!("../../assets/charts/charts.css"),
        CSS,
        REVALIDATE,
    ),
    asset(
        "/charts/assets/uplot-1.6.32/uPlot.iife.min.js",
        include_bytes!("../../assets/vendor/uplot/uPlot.iife.min.js"),
        JS,
        IMMUTABLE,
    ),
    asset(
        "/charts/assets/uplot-1.6.32/uPlot.min.css",
        include_bytes!("../../assets/vendor/uplot/uPlot.min.css"),
        CSS,
        IMMUTABLE,
    ),
    asset(
        "/charts/assets/uplot-1.6.32/LICENSE",
        include_bytes!("../../assets/vendor/uplot/LICENSE"),
        TEXT,
        IMMUTABLE,
    ),
    asset(
        "/charts/assets/uplot-1.6.32/VERSION",
        include_bytes!("../../assets/vendor/uplot/VERSION"),
        TEXT,
        IMMUTABLE,
    ),
];

/// Each asset's strong `ETag`: the first 16 hex digits of its SHA-256, computed once.
static ETAGS: LazyLock<Vec<HeaderValue>> = LazyLock::new(|| {
    ASSETS
        .iter()
        .map(|asset| {
            let digest = Sha256::digest(asset.body);
            let tag = format!("\"{}\"", hex::encode(&digest[..8]));
            HeaderValue::from_str(&tag).expect("hex is a valid header value")
        })
        .collect()
});

pub(super) fn routes() -> Router<Arc<HttpState>> {
    ASSETS
        .iter()
        .enumerate()
        .fold(Router::new(), |router, (index, asset)| {
            router.route(
                asset.path,
                get(move |headers: HeaderMap| async move { serve(index, &headers) })
                    .fallback(read_only),
            )
        })
}

fn serve(index: usize, request: &HeaderMap) -> Response {
    let asset = &ASSETS[index];
    let etag = &ETAGS[index];
    let unchanged = request
        .get(header::IF_NONE_MATCH)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|tags| tags.split(',').any(|t| t.trim() == etag || t.trim() == "*"));
    let mut response = if unchanged {
        plain(StatusCode::NOT_MODIFIED, "")
    } else {
        plain(StatusCode::OK, asset.body)
    };
    let headers = response.headers_mut();
    if unchanged {
        headers.remove(header::CONTENT_TYPE);
    } else {
        headers.insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static(asset.content_type),
        );
    }
    headers.insert(
        header::CACHE_CONTROL,
        HeaderValue::from_static(asset.cache_control),
    );
    headers.insert(header::ETAG, etag.clone());
    headers.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    response
}

#[cfg(test)]
mod tests {
    use super::super::testing::TestServer;
    use super::*;
    use crate::http::HttpOptions;

    #[tokio::test]
    async fn every_asset_is_served_with_its_type_and_cache_policy() {
        let server = TestServer::start(HttpOptions::default()).await;
        for asset in &ASSETS {
            let response = server.get(asset.path, "").await;
            assert_eq!(response.status, 200, "{}", asset.path);
            assert_eq!(response.body, asset.body, "{}", asset.path);
            assert_eq!(response.header("content-type"), Some(asset.content_type));
            assert_eq!(response.header("cache-control"), Some(asset.cache_control));
            assert_eq!(response.header("x-content-type-options"), Some("nosniff"));
        }
        let vendored = server
            .get("/charts/assets/uplot-1.6.32/uPlot.iife.min.js", "")
            .await;
        assert_eq!(vendored.header("cache-control"), Some(IMMUTABLE));
        assert_eq!(
            server.get("/charts", "").await.header("cache-control"),
            Some("no-cache")
        );
    }

    #[tokio::test]
    async fn an_unchanged_asset_is_answered_304_to_its_etag() {
        let server = TestServer::start(HttpOptions::default()).await;
        let first = server.get("/charts/assets/charts.js", "").await;
        let etag = first.header("etag").unwrap().to_owned();
        assert!(etag.starts_with('"') && etag.len() == 18, "{etag}");
        let again = server
            .get(
                "/charts/assets/charts.js",
                &format!("If-None-Match: \"other\", {etag}\r\n"),
            )
            .await;
        assert_eq!(again.status, 304);
        assert!(again.body.is_empty());
        assert_eq!(again.header("etag"), Some(etag.as_str()));
        let stale = server
            .get("/charts/assets/charts.js", "If-None-Match: \"0\"\r\n")
            .await;
        assert_eq!(stale.status, 200);
    }

    #[test]
    fn the_page_links_exactly_the_embedded_assets_and_the_vendored_version() {
        let page = std::str::from_utf8(ASSETS[0].body).unwrap();
        for asset in &ASSETS[1..5] {
            assert!(
                page.contains(asset.path),
                "the page does not link {}",
                asset.path
            );
        }
        let version = std::str::from_utf8(ASSETS[6].body).unwrap();
        assert!(
            version.starts_with(&format!("uplot {UPLOT_VERSION}\n")),
            "{version}"
        );
        let script = std::str::from_utf8(ASSETS[3].body).unwrap();
        assert!(script.contains(&format!("(v{UPLOT_VERSION})")));
        for asset in &ASSETS[3..] {
            assert!(asset.path.contains(&format!("/uplot-{UPLOT_VERSION}/")));
        }
    }

    #[tokio::test]
    async fn the_landing_page_links_the_charts() {
        let server = TestServer::start(HttpOptions::default()).await;
        let response = server.get("/", "").await;
        let page = response.text();
        assert!(page.contains("<a href=\"/charts\">"), "{page}");
    }
}
