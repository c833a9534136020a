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
 */
    .code64
    .set SERIAL, 0x3f8
    .set REPORT_BOOT, 0x440
    .set REPORT_EXIT, 0x441
    .set I8042_CMD, 0x64
    .set CMDLINE_PTR, 0x228
    .set E820_ENTRIES, 0x1e8
    .set E820_TABLE, 0x2d0

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
