//! What applies without any policy file.

use super::{EnvRules, Origin, Policy, Rule, UserMountRules};

fn builtin(paths: &[&str]) -> Vec<Rule> {
    paths
        .iter()
        .map(|p| Rule {
            path: p.to_string(),
            origin: Origin("built-in default".into()),
        })
        .collect()
}

impl Default for Policy {
    /// What applies without any policy file: devices carried in when present, user mounts
    /// unrestricted, no site mounts, no MPI injection.
    fn default() -> Self {
        Policy {
            files: Vec::new(),
            mode: None,
            linger: None,
            cache_dir: None,
            image_store: None,
            site_store: None,
            stage_images: false,
            image_idle: None,
            image_cache_mib: None,
            mounts: Vec::new(),
            user_mounts: UserMountRules {
                enabled: true,
                ..Default::default()
            },
            device_paths: builtin(&["/dev/infiniband"]),
            device_config: builtin(&["/etc/libibverbs.d", "/etc/rdma"]),
            device_libraries: Vec::new(),
            gpu_enabled: true,
            gpu_devices: builtin(&[
                "/dev/nvidiactl",
                "/dev/nvidia-uvm",
                "/dev/nvidia-uvm-tools",
                "/dev/nvidia-modeset",
                "/dev/nvidia[0-9]*",
            ]),
            gpu_libraries: builtin(&[
                "libcuda.so*",
                "libnvidia-ml.so*",
                "libnvidia-ptxjitcompiler.so*",
                "libnvidia-nvvm.so*",
                "libnvidia-fatbinaryloader.so*",
                "libnvidia-opencl.so*",
            ]),
            mpi: None,
            pmix_server_dir: true,
            munge_socket_dir: Some(Rule {
                path: "/run/munge".into(),
                origin: Origin("built-in default".into()),
            }),
            env: EnvRules::default(),
        }
    }
}
