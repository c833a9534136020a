//! Skiff's host-side images: the OCI image store (`store`: digest-verified blobs, images,
//! import of OCI layouts and `docker save` archives, pulls from OCI distribution registries over
//! HTTP(S) with token or basic auth) and packing what a guest reads (the initramfs, a newc cpio
//! archive written by our own code; image disks).

pub mod cpio;
pub mod image_disk;
pub mod initramfs;
pub mod scratch_disk;
pub mod store;
