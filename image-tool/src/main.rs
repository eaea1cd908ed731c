//! `berth-image`: turns OCI/Docker images into squashfs files that `berth run` runs.
//!
//! Not built yet: the importer (registry, docker-archive, OCI layouts, verified layers) is
//! issue 3. Images for berth are made today with `mksquashfs ROOTFS IMG.sqsh`, optionally with
//! an image config at `/.berth/image.json` (schema: `berth_launcher::image_config`).

fn main() {
    eprintln!("berth-image: not available yet (the importer is issue 3); make images with mksquashfs ROOTFS IMG.sqsh");
    std::process::exit(2);
}
