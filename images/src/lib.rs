//! Skiff's host-side images: the OCI image store (`store`: digest-verified blobs, images,
//! import of OCI layouts) and packing what a guest reads (the initramfs, a newc cpio archive
//! written by our own code).

pub mod cpio;
pub mod image_disk;
pub mod initramfs;
pub mod scratch_disk;
pub mod store;
