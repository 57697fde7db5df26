//! Helpers shared by the fuzz targets: the strict scrape checker, which lives with the tests
//! (tests/common/scrape_check.rs) so that the property test reads scrapes the same way.

#[path = "../../tests/common/scrape_check.rs"]
mod scrape_check;

pub use scrape_check::*;
