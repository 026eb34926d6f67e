//! A report opened in a real browser: headless Chromium loads `index.html` from disk, runs its
//! script, and records every network request in a NetLog.
#![allow(dead_code, clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::path::{Path, PathBuf};
use std::process::Command;

/// Set (by `.ci/run`) to fail instead of skipping when no Chromium is installed.
const REQUIRE: &str = "BLINDFOLD_REQUIRE_BROWSER";

/// The screenshot's window: wide enough for the summary table, tall enough for several cards.
pub const WINDOW: (u32, u32) = (1200, 1600);

/// Chromium: `$BLINDFOLD_CHROMIUM`, else the first of `chromium`, `chromium-browser` and
/// `google-chrome` on the PATH. `None` (the test is skipped, saying so) unless
/// `BLINDFOLD_REQUIRE_BROWSER` is set.
pub fn chromium() -> Option<PathBuf> {
    let found = std::env::var_os("BLINDFOLD_CHROMIUM").map(PathBuf::from).or_else(|| {
        let path = std::env::var_os("PATH")?;
        std::env::split_paths(&path)
            .flat_map(|dir| ["chromium", "chromium-browser", "google-chrome"].map(|name| dir.join(name)))
            .find(|candidate| candidate.is_file())
    });
    if found.is_none() {
        assert!(
            std::env::var_os(REQUIRE).is_none(),
            "{REQUIRE} is set but no Chromium was found (install Debian's chromium package)"
        );
        eprintln!("SKIPPED the browser checks: no chromium on the PATH (set {REQUIRE} to make this an error)");
    }
    found
}

/// What the browser made of a page.
pub struct Rendered {
    /// The DOM after the page's scripts ran.
    pub dom: String,
    /// The screenshot's width and height.
    pub screenshot: (u32, u32),
    /// The screenshot itself.
    pub picture: image::RgbaImage,
    /// Every request the page made (not the browser's own background traffic) for anything but
    /// `file:` and `data:` URLs.
    pub network_requests: Vec<String>,
}

fn headless(browser: &Path, scratch: &Path) -> Command {
    let mut command = Command::new(browser);
    command.args([
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--no-first-run",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--hide-scrollbars",
        "--virtual-time-budget=5000",
    ]);
    command.arg(format!("--user-data-dir={}", scratch.join("profile").display()));
    command
}

/// Opens `page` in `browser`: the DOM after load (with `--dump-dom`), a NetLog of that load,
/// and a screenshot of [`WINDOW`]'s size.
pub fn render(browser: &Path, page: &Path) -> Rendered {
    let scratch = tempfile::tempdir().unwrap();
    let url = format!("file://{}", page.canonicalize().unwrap().display());
    let net_log = scratch.path().join("net-log.json");
    let out = headless(browser, scratch.path())
        .arg(format!("--log-net-log={}", net_log.display()))
        .arg("--dump-dom")
        .arg(&url)
        .output()
        .unwrap();
    assert!(out.status.success(), "chromium --dump-dom failed: {}", String::from_utf8_lossy(&out.stderr));
    let dom = String::from_utf8(out.stdout).unwrap();
    let shot = scratch.path().join("screenshot.png");
    let out = headless(browser, scratch.path())
        .arg(format!("--screenshot={}", shot.display()))
        .arg(format!("--window-size={},{}", WINDOW.0, WINDOW.1))
        .arg(&url)
        .output()
        .unwrap();
    assert!(out.status.success(), "chromium --screenshot failed: {}", String::from_utf8_lossy(&out.stderr));
    let picture = image::open(&shot).unwrap().to_rgba8();
    Rendered { dom, screenshot: picture.dimensions(), picture, network_requests: page_requests(&net_log) }
}

/// The URLs of the requests the page started: `URL_REQUEST_START_JOB` events whose network
/// isolation key is the `file://` page's (Chromium's own update and account checks have
/// another key), for any scheme but `file:` and `data:`.
fn page_requests(net_log: &Path) -> Vec<String> {
    let log: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(net_log).unwrap()).unwrap();
    let start_job = log["constants"]["logEventTypes"]["URL_REQUEST_START_JOB"].as_u64().unwrap();
    let mut urls: Vec<String> = log["events"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|event| event["type"].as_u64() == Some(start_job))
        .filter(|event| event["params"]["network_isolation_key"].as_str().is_some_and(|key| key.contains("file://")))
        .filter_map(|event| event["params"]["url"].as_str())
        .filter(|url| !url.starts_with("file:") && !url.starts_with("data:"))
        .map(str::to_owned)
        .collect();
    urls.dedup();
    urls
}

/// The value of `attribute` on the page's `<body>` in `dom`.
pub fn body_attribute(dom: &str, attribute: &str) -> Option<String> {
    let body = &dom[dom.find("<body")?..];
    let tag = &body[..body.find('>')?];
    let start = tag.find(&format!("{attribute}=\""))? + attribute.len() + 2;
    Some(tag[start..start + tag[start..].find('"')?].to_owned())
}

/// The detector itself: a page that fetches an image over HTTP must show that request, or a
/// report's empty list would prove nothing.
pub fn assert_detects_network_requests(browser: &Path) {
    let dir = tempfile::tempdir().unwrap();
    let page = dir.path().join("fetches.html");
    std::fs::write(&page, r#"<!DOCTYPE html><html><body><img src="http://127.0.0.1:9/probe.png"></body></html>"#)
        .unwrap();
    let rendered = render(browser, &page);
    assert_eq!(rendered.network_requests, ["http://127.0.0.1:9/probe.png"], "the NetLog check sees page requests");
}

/// Checks what the browser made of `page`: every picture and bar rendered, the screenshot is a
/// page of the asked size with something on it, and the page requested nothing.
pub fn assert_renders(page: &Path, pictures: usize, bars: usize) -> Option<Rendered> {
    let chromium = chromium()?;
    assert_detects_network_requests(&chromium);
    let rendered = render(&chromium, page);
    let attribute = |name: &str| body_attribute(&rendered.dom, name);
    assert_eq!(attribute("data-pictures").as_deref(), Some(pictures.to_string().as_str()), "pictures on the page");
    assert_eq!(attribute("data-pictures-rendered"), attribute("data-pictures"), "every picture decoded and drawn");
    assert_eq!(attribute("data-bars").as_deref(), Some(bars.to_string().as_str()), "bars on the page");
    assert_eq!(attribute("data-bars-rendered"), attribute("data-bars"), "every bar laid out");
    assert!(rendered.dom.contains("pictures and") && rendered.dom.contains("bars rendered."), "footer status");
    assert_eq!(rendered.screenshot, WINDOW);
    let colours: std::collections::HashSet<[u8; 4]> = rendered.picture.pixels().map(|p| p.0).collect();
    assert!(colours.len() > 50, "the screenshot shows a page, not a blank ({} colours)", colours.len());
    assert!(rendered.network_requests.is_empty(), "the report made requests: {:?}", rendered.network_requests);
    Some(rendered)
}
