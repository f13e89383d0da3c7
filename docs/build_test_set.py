#!/usr/bin/env python3
"""Build the held-out photo TEST set (shared/data/photos/test/) from Debian bookworm packages.

Held-out test set: never trained on, never used for model selection.

Reproducible recipe:
  1. `apt-get download <package>=<version>` for each package below (falls back to the
     current bookworm version, with a warning, if that exact version is gone), then
     `dpkg-deb -x` into a scratch folder.
  2. For each listed file: sha256 of the source file; EXIF orientation applied; an embedded ICC
     profile (if any, and not already sRGB) converted to sRGB with ImageCms (relative colorimetric);
     converted to RGB (alpha dropped).
  3. Downscale with Lanczos by factor f = max(2, longer_side / 768) (so every image is downscaled
     at least 2x; sources with a longer side >= 1536 px end at 768 px on the longer side).
     Then a light center crop to make both dimensions multiples of 16 (at most 15 px per side).
     Required result: longer side 640..1024, shorter side >= 400.
  4. Near-duplicate check against shared/data/photos/{train,val,extra} and against test images
     already kept: drop if the source sha256 equals a reference file's sha256, if the 32x32
     grayscale thumbnails correlate > 0.95, or if the 8x8 average hashes differ in <= 4 bits
     while the correlation is > 0.85.
  5. Save as PNG (lossless, no metadata) named
     `<package>__<path inside the package, "/" -> "__", extension dropped>.png`,
     and write manifest.tsv beside them.

Needs: python3 with Pillow (with ImageCms) and numpy; apt-get and dpkg-deb; network access to
Debian's archive. Run as root (or anyone allowed to run `apt-get download`):

    nice -n 5 python3 build_test_set.py --out shared/data/photos/test --ref shared/data/photos \
        --work /tmp/testset-work/build
"""
import argparse
import fnmatch
import glob
import hashlib
import io
import os
import re
import subprocess
import sys

import numpy as np
from PIL import Image, ImageCms, ImageOps

Image.MAX_IMAGE_PIXELS = None

# package -> (version used, [paths inside the package])
PACKAGES = {
    "krank": ("0.7+dfsg2-4", [
        "usr/share/games/krank/levels/unera-backgrounds/level-06.jpg",
        "usr/share/games/krank/levels/unera-backgrounds/level-09.jpg",
        "usr/share/games/krank/levels/unera-backgrounds/level-11.jpg",
        "usr/share/games/krank/levels/unera-backgrounds/level-14.jpg",
        "usr/share/games/krank/levels/unera-backgrounds/level-20.jpg",
        "usr/share/games/krank/levels/unera-backgrounds/level-29.jpg",
        "usr/share/games/krank/levels/unera-backgrounds/menu-scores.jpg",
    ]),
    "lifeograph": ("2.0.3-1", [
        # fog.jpg is dropped by the aHash rule (false positive vs train's kphotoalbum skagen.jpg;
        # kept in the list on purpose so the drop stays visible in the log).
        "usr/share/net.sourceforge.Lifeograph/backgrounds/fog.jpg",
        "usr/share/net.sourceforge.Lifeograph/backgrounds/snow.jpg",
        "usr/share/net.sourceforge.Lifeograph/backgrounds/sands.jpg",
        "usr/share/net.sourceforge.Lifeograph/backgrounds/horizon.jpg",
        "usr/share/net.sourceforge.Lifeograph/backgrounds/street.jpg",
        "usr/share/net.sourceforge.Lifeograph/backgrounds/pier.jpg",
        "usr/share/net.sourceforge.Lifeograph/backgrounds/cloister.jpg",
    ]),
    "libjs-jquery-backstretch": ("2.1.17-4", [
        "usr/share/doc/libjs-jquery-backstretch/examples/sample1_1920.jpg",
        "usr/share/doc/libjs-jquery-backstretch/examples/sample2_1920.jpg",
        "usr/share/doc/libjs-jquery-backstretch/examples/dome.jpg",
    ]),
    "tuxpaint-data": ("1:0.9.28-sdl2-1", [
        "usr/share/tuxpaint/templates/cliff.jpg",
        "usr/share/tuxpaint/templates/rocks.jpg",
        "usr/share/tuxpaint/templates/sun_behind_clouds.jpg",
    ]),
    "zoph": ("1.0.1-3", [
        "usr/share/zoph/www/php/templates/default/images/backgrounds/fir.jpg",
        "usr/share/zoph/www/php/templates/default/images/backgrounds/flower.jpg",
    ]),
    "budgie-core": ("10.7.1-1", [
        "usr/share/backgrounds/budgie/default.jpg",
    ]),
    "libelementary-data": ("1.26.3-1", [
        "usr/share/elementary/images/insanely_huge_test_image.jpg",
    ]),
    "mate-screensaver-common": ("1.26.1-1+deb12u1", [
        "usr/share/backgrounds/cosmos/earth-horizon.jpg",
    ]),
}

# Packages used by train/val/extra (or otherwise banned): must never appear above.
BANNED_PACKAGES = [
    "mate-backgrounds", "plasma-workspace-wallpapers", "lomiri-wallpapers*", "kphotoalbum",
    "opencv-doc", "forensics-samples-files", "scratch", "darknet", "palapeli-data",
    "enlightenment-data", "lxqt-themes", "sddm-theme-maldives", "digikam-data", "texlive-*-doc",
    "supertuxkart-data", "ufoai-textures", "torcs-data", "nexuiz-textures", "megaglest-data",
    "flightgear-data-base", "gnome-control-center-data",
]
RESERVED_NAMES = ["kodim*", "monarch*", "barbara*", "sail*", "tulips*", "lena*", "peppers*",
                  "baboon*"]
RESERVED_RE = re.compile(r"^I(0[1-9]|1[0-9]|2[0-5])\.bmp$", re.I)

TARGET_LONG = 768
MIN_FACTOR = 2.0
CORR_MAX = 0.95
AHASH_MAX_DIST = 4  # ... or if the 8x8 aHashes differ in <= 4 bits while corr > AHASH_CORR
AHASH_CORR = 0.85   # (aHash alone misfires on flat, low-contrast images such as fog)
IMG_EXT = (".jpg", ".jpeg", ".png", ".webp", ".bmp", ".tif", ".tiff")


def sh(cmd, cwd=None):
    return subprocess.run(cmd, cwd=cwd, check=True, capture_output=True, text=True).stdout


def sha256(path):
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def fetch(pkg, version, debdir, xdir):
    dest = os.path.join(xdir, pkg)
    found = glob.glob(os.path.join(debdir, f"{pkg}_*.deb"))
    if not found:
        try:
            sh(["apt-get", "download", f"{pkg}={version}"], cwd=debdir)
        except subprocess.CalledProcessError:
            print(f"WARNING: {pkg}={version} not downloadable; using current version", file=sys.stderr)
            sh(["apt-get", "download", pkg], cwd=debdir)
        found = glob.glob(os.path.join(debdir, f"{pkg}_*.deb"))
    deb = sorted(found)[-1]
    got = sh(["dpkg-deb", "-f", deb, "Version"]).strip()
    if got != version:
        print(f"WARNING: {pkg}: got version {got}, recipe used {version}", file=sys.stderr)
    if not os.path.isdir(dest):
        os.makedirs(dest)
        sh(["dpkg-deb", "-x", deb, dest])
    return dest, got


def to_srgb_rgb(im):
    im = ImageOps.exif_transpose(im)
    icc = im.info.get("icc_profile")
    if icc:
        src = ImageCms.ImageCmsProfile(io.BytesIO(icc))
        desc = ImageCms.getProfileDescription(src) or ""
        if "srgb" not in desc.lower():
            if im.mode not in ("RGB", "CMYK", "L"):
                im = im.convert("RGB")
            im = ImageCms.profileToProfile(im, src, ImageCms.createProfile("sRGB"),
                                           renderingIntent=ImageCms.Intent.RELATIVE_COLORIMETRIC,
                                           outputMode="RGB")
            print(f"  converted ICC '{desc.strip()}' -> sRGB")
    if im.mode != "RGB":
        im = im.convert("RGB")  # drops alpha
    return im


def downscale(im):
    w, h = im.size
    f = max(MIN_FACTOR, max(w, h) / TARGET_LONG)
    nw, nh = round(w / f), round(h / f)
    im = im.resize((nw, nh), Image.Resampling.LANCZOS)
    cw, ch = nw - nw % 16, nh - nh % 16
    left, top = (nw - cw) // 2, (nh - ch) // 2
    im = im.crop((left, top, left + cw, top + ch))
    return im, f


def features(im):
    g = im.convert("L")
    t = np.asarray(g.resize((32, 32), Image.Resampling.BILINEAR), dtype=np.float64).ravel()
    t = t - t.mean()
    n = np.linalg.norm(t)
    t = t / n if n > 0 else t
    a = np.asarray(g.resize((8, 8), Image.Resampling.BILINEAR), dtype=np.float64).ravel()
    return t, a > a.mean()


def load_refs(ref_root):
    refs = []
    shas = {}
    for sub in ("train", "val", "extra"):
        for p in sorted(glob.glob(os.path.join(ref_root, sub, "*"))):
            if not p.lower().endswith(IMG_EXT):
                continue
            shas[sha256(p)] = p
            try:
                im = Image.open(p)
                im.draft("RGB", (256, 256))
                im = ImageOps.exif_transpose(im).convert("RGB")
            except Exception as e:  # pragma: no cover
                print(f"WARNING: cannot read reference {p}: {e}", file=sys.stderr)
                continue
            refs.append((p,) + features(im))
    return refs, shas


def main():
    ap = argparse.ArgumentParser()
    here = os.path.dirname(os.path.abspath(__file__))
    ap.add_argument("--out", default=here)
    ap.add_argument("--ref", default=os.path.dirname(here))
    ap.add_argument("--work", default="/tmp/testset-work/build")
    args = ap.parse_args()

    for pkg in PACKAGES:
        for pat in BANNED_PACKAGES:
            if fnmatch.fnmatch(pkg, pat):
                sys.exit(f"banned package {pkg}")
    debdir = os.path.join(args.work, "debs")
    xdir = os.path.join(args.work, "x")
    os.makedirs(debdir, exist_ok=True)
    os.makedirs(xdir, exist_ok=True)
    os.makedirs(args.out, exist_ok=True)

    print("loading reference sets ...")
    refs, ref_shas = load_refs(args.ref)
    print(f"  {len(refs)} reference images")

    kept = []  # (name, tvec, ahash)
    rows = []
    seen_sha = {}
    for pkg, (version, paths) in PACKAGES.items():
        root, got = fetch(pkg, version, debdir, xdir)
        for rel in paths:
            base = os.path.basename(rel)
            if any(fnmatch.fnmatch(base.lower(), p) for p in RESERVED_NAMES) or RESERVED_RE.match(base):
                print(f"SKIP reserved name {pkg}/{rel}")
                continue
            src = os.path.join(root, rel)
            name = pkg + "__" + os.path.splitext(rel)[0].replace("/", "__") + ".png"
            digest = sha256(src)
            if digest in ref_shas or digest in seen_sha:
                print(f"DROP {name}: sha256 equals {ref_shas.get(digest) or seen_sha[digest]}")
                continue
            seen_sha[digest] = name
            im0 = Image.open(src)
            fmt, (w0, h0) = im0.format, im0.size
            im = to_srgb_rgb(im0)
            w0, h0 = im.size  # after EXIF rotation
            im, f = downscale(im)
            w, h = im.size
            if f < MIN_FACTOR or not (640 <= max(w, h) <= 1024) or min(w, h) < 400:
                print(f"DROP {name}: size {w}x{h} (factor {f:.3f}) out of range")
                continue
            t, a = features(im)
            dup = None
            best = (-2.0, "", 64)
            for (rp, rt, ra) in refs + kept:
                corr = float(np.dot(t, rt))
                dist = int(np.count_nonzero(a != ra))
                if corr > best[0]:
                    best = (corr, os.path.basename(rp), dist)
                if corr > CORR_MAX or (dist <= AHASH_MAX_DIST and corr > AHASH_CORR):
                    dup = f"{os.path.basename(rp)} (corr {corr:.3f}, ahash dist {dist})"
                    break
            if dup:
                print(f"DROP {name}: near-duplicate of {dup}")
                continue
            im.save(os.path.join(args.out, name), format="PNG")
            kept.append((name, t, a))
            rows.append((name, pkg, got, rel, fmt, f"{w0}x{h0}", f"{f:.4f}", f"{w}x{h}", digest))
            print(f"KEEP {name}: {fmt} {w0}x{h0} / {f:.3f} -> {w}x{h}; "
                  f"closest {best[1]} corr {best[0]:.3f} ahash dist {best[2]}")

    with open(os.path.join(args.out, "manifest.tsv"), "w") as fh:
        fh.write("file\tpackage\tversion\tpath_in_package\tsource_format\tsource_size\tfactor\tsize\tsource_sha256\n")
        for r in rows:
            fh.write("\t".join(r) + "\n")
    mp = sum(int(r[7].split("x")[0]) * int(r[7].split("x")[1]) for r in rows) / 1e6
    print(f"kept {len(rows)} images, {mp:.2f} megapixels")


if __name__ == "__main__":
    main()
