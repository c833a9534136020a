/*
 * A tiny 64-bit test guest for skiff-vmm (verification level 2: this machine's /dev/kvm cannot run
 * Linux). skiff-vmm loads it like a vmlinux and enters it in long mode with RSI pointing to the
 * zero page. The first character of the kernel command line picks what it does:
 *
 *   h  hello: report boot, print a banner, the command line and the RAM size from the e820 map,
 *      check a write/read at the top of RAM and at 16 MiB, then report exit status 42
 *   r  reset: print a line and reset through the i8042 without reporting a status
 *   p  panic: print what a kernel panic prints, then reset
 *   t  triple fault: execute ud2 with an empty IDT
 *   w  wait: report boot, print "test guest: waiting", then spin until the VMM is killed
 *   m  MMIO: write to and read from 768 MiB, which nothing decodes in a guest with less RAM, then
 *      report the value read as the exit status (0xff)
 *   f  flood: a hostile driver of the virtio device in the first MMIO slot (skiff-vmm --rng):
 *      set up its queue 0 with 16 entries, all naming one 64-byte buffer, print "test guest:
 *      flooding" once the device used one, then make every used entry available again at once,
 *      for ever (exit status 1: no virtio device there)
 */
    .code64
    .set SERIAL, 0x3f8
    .set REPORT_BOOT, 0x440
    .set REPORT_EXIT, 0x441
    .set I8042_CMD, 0x64
    .set CMDLINE_PTR, 0x228
    .set E820_ENTRIES, 0x1e8
    .set E820_TABLE, 0x2d0

    /* The flood: the first virtio-mmio slot, and the driver's structures in guest RAM. */
    .set VIRTIO_MMIO, 0xd0000000
    .set VIO_DEVICE_ID, 0x008
    .set VIO_DRIVER_FEATURES, 0x020
    .set VIO_DRIVER_FEATURES_SEL, 0x024
    .set VIO_QUEUE_SEL, 0x030
    .set VIO_QUEUE_NUM, 0x038
    .set VIO_QUEUE_READY, 0x044
    .set VIO_QUEUE_NOTIFY, 0x050
    .set VIO_STATUS, 0x070
    .set VIO_QUEUE_DESC, 0x080
    .set VIO_QUEUE_DRIVER, 0x090
    .set VIO_QUEUE_DEVICE, 0x0a0
    .set FLOOD_PD, 0x400000         /* page directory mapping 0xc0000000..0xffffffff */
    .set FLOOD_DESC, 0x500000
    .set FLOOD_AVAIL, 0x501000
    .set FLOOD_USED, 0x502000
    .set FLOOD_BUF, 0x503000
    .set FLOOD_QSIZE, 16

    .text
    .globl _start
_start:
    mov %rsi, %r15                  /* zero page */
    mov CMDLINE_PTR(%r15), %r14d    /* command line */
    movzbl (%r14), %eax
    cmp $'r', %al
    je reset
    cmp $'p', %al
    je panic
    cmp $'t', %al
    je triple
    cmp $'m', %al
    je mmio
    cmp $'w', %al
    je wait
    cmp $'f', %al
    je flood

hello:
    mov $REPORT_BOOT, %dx
    mov $1, %al
    out %al, %dx
    lea banner(%rip), %rsi
    call puts
    lea cmdline_label(%rip), %rsi
    call puts
    mov %r14, %rsi
    call puts
    call newline

    /* Sum the sizes of the e820 RAM entries, and find the end of the last one. */
    movzbl E820_ENTRIES(%r15), %ecx
    lea E820_TABLE(%r15), %rbx
    xor %r12, %r12                  /* total */
    xor %r13, %r13                  /* end of last entry */
1:  test %ecx, %ecx
    jz 2f
    mov 8(%rbx), %rax
    add %rax, %r12
    add (%rbx), %rax
    mov %rax, %r13
    add $20, %rbx
    dec %ecx
    jmp 1b
2:  lea ram_label(%rip), %rsi
    call puts
    mov %r12, %rax
    call puthex
    call newline

    /* Write a pattern at the last word of RAM and at 16 MiB and read it back. */
    mov $0x5ca1ab1e5ca1ab1e, %rax
    mov %rax, -8(%r13)
    mov %rax, 0x1000000
    cmp -8(%r13), %rax
    jne 3f
    cmp 0x1000000, %rax
    jne 3f
    lea mem_ok(%rip), %rsi
    jmp 4f
3:  lea mem_bad(%rip), %rsi
4:  call puts

    mov $REPORT_EXIT, %dx
    mov $42, %al
    out %al, %dx
    jmp halt

reset:
    lea resetting(%rip), %rsi
    call puts
    jmp do_reset

panic:
    lea panic_msg(%rip), %rsi
    call puts
do_reset:
    mov $I8042_CMD, %dx
    mov $0xfe, %al
    out %al, %dx
    jmp halt

triple:
    lea faulting(%rip), %rsi
    call puts
    ud2

mmio:
    mov $0x30000000, %rbx          /* below the 1 GiB identity map, above RAM */
    movl $0x1234, (%rbx)
    movzbl (%rbx), %eax
    mov $REPORT_EXIT, %dx
    out %al, %dx
    jmp halt

wait:
    mov $REPORT_BOOT, %dx
    mov $1, %al
    out %al, %dx
    lea waiting(%rip), %rsi
    call puts
1:  pause
    jmp 1b

flood:
    mov $REPORT_BOOT, %dx
    mov $1, %al
    out %al, %dx
    /* Map the 2 MiB at VIRTIO_MMIO: PDPT[3] (found through CR3 and PML4[0]) -> FLOOD_PD. */
    mov $FLOOD_PD, %rdi
    mov $512, %ecx
    xor %eax, %eax
    rep stosq
    mov $(VIRTIO_MMIO | 0x9b), %eax /* present, writable, uncached, 2 MiB page */
    mov %rax, FLOOD_PD + ((VIRTIO_MMIO - 0xc0000000) >> 21) * 8
    mov %cr3, %rax
    mov $0x000ffffffffff000, %rcx
    and %rcx, %rax
    mov (%rax), %rbx                /* PML4[0] */
    and %rcx, %rbx                  /* the PDPT */
    mov $(FLOOD_PD | 3), %eax
    mov %rax, 3*8(%rbx)
    mov %cr3, %rax
    mov %rax, %cr3
    /* Is a virtio device there? */
    mov $VIRTIO_MMIO, %rbx
    cmpl $0x74726976, (%rbx)        /* "virt" */
    jne 9f
    cmpl $0, VIO_DEVICE_ID(%rbx)
    je 9f
    /* Negotiate VERSION_1 only; one queue of FLOOD_QSIZE entries. */
    movl $0, VIO_STATUS(%rbx)
    movl $1, VIO_STATUS(%rbx)
    movl $3, VIO_STATUS(%rbx)
    movl $1, VIO_DRIVER_FEATURES_SEL(%rbx)
    movl $1, VIO_DRIVER_FEATURES(%rbx)
    movl $0, VIO_DRIVER_FEATURES_SEL(%rbx)
    movl $0, VIO_DRIVER_FEATURES(%rbx)
    movl $0xb, VIO_STATUS(%rbx)
    movl $0, VIO_QUEUE_SEL(%rbx)
    movl $FLOOD_QSIZE, VIO_QUEUE_NUM(%rbx)
    movl $FLOOD_DESC, VIO_QUEUE_DESC(%rbx)
    movl $0, VIO_QUEUE_DESC+4(%rbx)
    movl $FLOOD_AVAIL, VIO_QUEUE_DRIVER(%rbx)
    movl $0, VIO_QUEUE_DRIVER+4(%rbx)
    movl $FLOOD_USED, VIO_QUEUE_DEVICE(%rbx)
    movl $0, VIO_QUEUE_DEVICE+4(%rbx)
    /* Descriptor 0: FLOOD_BUF, 64 bytes, device-writable. Every avail ring entry is 0 (fresh
       RAM): each names it. The driver polls: no interrupts (VRING_AVAIL_F_NO_INTERRUPT). */
    movq $FLOOD_BUF, FLOOD_DESC
    movl $64, FLOOD_DESC+8
    movw $2, FLOOD_DESC+12
    movw $1, FLOOD_AVAIL
    movl $1, VIO_QUEUE_READY(%rbx)
    movl $0xf, VIO_STATUS(%rbx)
    xor %r8d, %r8d                  /* the avail index we publish */
    xor %r9d, %r9d                  /* told the console yet? */
1:  movzwl FLOOD_USED+2, %eax       /* used index */
    test %r9d, %r9d
    jnz 2f
    test %ax, %ax
    jz 2f
    lea flooding(%rip), %rsi
    call puts
    mov $1, %r9d
2:  mov %r8w, %cx
    sub %ax, %cx
    cmp $FLOOD_QSIZE, %cx
    jae 1b                          /* the ring is full: wait for the device */
    inc %r8d
    mov %r8w, FLOOD_AVAIL+2
    testw $1, FLOOD_USED            /* VRING_USED_F_NO_NOTIFY: the device is serving */
    jnz 1b
    movl $0, VIO_QUEUE_NOTIFY(%rbx)
    jmp 1b
9:  mov $REPORT_EXIT, %dx
    mov $1, %al
    out %al, %dx
    jmp halt

halt:
    hlt
    jmp halt

/* Print the NUL-terminated string at RSI. */
puts:
    mov $SERIAL, %dx
1:  lodsb
    test %al, %al
    jz 2f
    out %al, %dx
    jmp 1b
2:  ret

newline:
    mov $SERIAL, %dx
    mov $'\n', %al
    out %al, %dx
    ret

/* Print RAX as 16 hex digits. */
puthex:
    mov %rax, %rbx
    mov $16, %ecx
    mov $SERIAL, %dx
1:  rol $4, %rbx
    mov %bl, %al
    and $0xf, %al
    add $'0', %al
    cmp $'9', %al
    jbe 2f
    add $('a' - '9' - 1), %al
2:  out %al, %dx
    dec %ecx
    jnz 1b
    ret

    .section .rodata
banner:        .asciz "skiff test guest: long mode ok\n"
cmdline_label: .asciz "cmdline: "
ram_label:     .asciz "ram: 0x"
mem_ok:        .asciz "memory: ok\n"
mem_bad:       .asciz "memory: MISMATCH\n"
resetting:     .asciz "test guest: resetting\n"
panic_msg:     .asciz "Kernel panic - not syncing: test guest panics on purpose\n"
faulting:      .asciz "test guest: triple faulting\n"
waiting:       .asciz "test guest: waiting\n"
flooding:      .asciz "test guest: flooding\n"
