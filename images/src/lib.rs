//! Skiff's host-side images: packing what a guest reads. For now the initramfs (a newc cpio
//! archive written by our own code); OCI images and task disks come with the image issues.

pub mod cpio;
pub mod initramfs;
